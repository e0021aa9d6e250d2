"""Models: every one follows :class:`attnrec.models.base.Recommender`."""

from attnrec.models.base import Recommender, available_models, get_model_class
from attnrec.models.baselines import EASE, ItemKNN, MostPopular
from attnrec.models.bert4rec import BERT4Rec
from attnrec.models.sasrec import SASRec
from attnrec.models import content, din  # noqa: F401,E402  (registers sasrec-content, text-sim, two-stage)

__all__ = ["Recommender", "available_models", "get_model_class", "MostPopular", "ItemKNN", "EASE", "SASRec", "BERT4Rec"]
