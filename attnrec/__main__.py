"""``python -m attnrec`` runs the CLI (so ``torchrun -m attnrec train ...`` works)."""

from attnrec.cli import app

if __name__ == "__main__":
    app(prog_name="attnrec")
