"""The web explorer at ``/``, driven in headless Chromium (Debian's, never a downloaded one).

A tiny SASRec on a small synthetic shop is served on loopback by uvicorn in a
thread; Playwright loads the page as a person would: a user's history,
explained recommendations, the attention heatmap, an event that changes the
list, an anonymous session, keyboard use, and no console errors.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
KEY = "explorer-test-key-0123"
VIEWPORT = {"width": 1366, "height": 768}  # a laptop screen


# ---- model and server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def explorer_bundle(tmp_path_factory) -> Path:
    from attnrec.data.synthetic import generate
    from attnrec.evaluation import evaluate
    from attnrec.models.sasrec import SASRec
    from attnrec.pipeline import make_split

    root = tmp_path_factory.mktemp("explorer")
    shop = generate(n_users=200, n_items=60, seed=5)
    raw = shop.write(root / "raw")
    data = shop.to_sequences()
    split = make_split(data, "loo")
    model = SASRec(epochs=4, d_model=16, n_layers=2, n_heads=2, max_len=20, batch_size=64,
                   dropout=0.1, num_threads=1, seed=0).fit(split.train_full)
    metrics = evaluate(model, split.test, ks=(10,)).metrics
    bundle = model.save(root / "bundle", metrics=metrics,
                        info={"dataset": "synthetic shop (200 users, 60 items)",
                              "protocol": split.describe()})
    shutil.copy(raw / "items.csv", bundle / "items.csv")
    return bundle


@pytest.fixture(scope="module")
def server(explorer_bundle, tmp_path_factory):
    from attnrec.serving import Settings, create_app

    settings = Settings(model_path=explorer_bundle, api_key=KEY, watch_model=False,
                        data_dir=tmp_path_factory.mktemp("explorer-db"))
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A fresh page that records console errors and uncaught exceptions."""

    def __init__(self, browser, base_url: str):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.base = base_url
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.set_default_timeout(10_000)

    def rec_ids(self) -> list[str]:
        return self.page.locator("#recs li.rec").evaluate_all("els => els.map(e => e.dataset.item)")

    def close(self):
        self.context.close()


@pytest.fixture
def page(browser, server):
    p = Page(browser, server.url)
    yield p
    p.close()


def expect(locator):
    from playwright.sync_api import expect as _expect  # no page-side eval: the page's CSP forbids it

    return _expect(locator)


def _wait_for_recs(page, n: int = 10):
    expect(page.page.locator("#recs li.rec")).to_have_count(n)


# ---- the page as a new visitor sees it ------------------------------------------------------
def test_first_visit_shows_a_user_explanations_and_heatmap(page, tmp_path):
    pg = page.page
    pg.goto(page.base + "/")
    _wait_for_recs(page)
    # a demo user is loaded straight away, and the URL names them
    user = pg.input_value("#user-input")
    assert user and pg.url.endswith(f"?user={user}")
    # the history timeline shows catalogue names and categories, not bare ids
    events = pg.locator("#timeline li.event")
    assert events.count() >= 5
    first = events.first
    assert not re.fullmatch(r"i\d+", first.locator(".ev-name").inner_text())
    assert re.search(r"\w+ · i\d+", first.locator(".ev-meta").inner_text())
    # recommendations with names, categories and scores
    rec = pg.locator("#recs li.rec").first
    assert re.search(r"score -?\d+\.\d{3}", rec.locator(".rec-meta").inner_text())
    # expand the first explanation: history items ranked by attention, drawn as bars
    why = rec.get_by_role("button", name="Why?")
    why.click()
    assert why.get_attribute("aria-expanded") == "true"
    panel = pg.locator("#" + why.get_attribute("aria-controls"))
    assert panel.is_visible()
    assert "Because you viewed" in panel.inner_text()
    bars = panel.locator(".bars li")
    assert 1 <= bars.count() <= 5
    shares = [float(t.rstrip("%")) for t in panel.locator(".bar-value").all_inner_texts()]
    assert shares == sorted(shares, reverse=True) and shares[0] > 0
    widths = panel.locator(".bar").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
    assert widths[0] == max(widths) > 0
    assert pg.locator("#timeline li.attended").count() >= 1  # the explained items light up
    # the heatmap: every layer and head can be chosen
    canvas = pg.locator("#heatmap")
    # by default all layers combined, as the explanations: the bottom row holds their shares
    assert "all layers combined" in canvas.get_attribute("aria-label")
    assert pg.locator("#layer-select option").count() == 3  # rollout + 2 layers
    assert pg.locator("#head-select option").count() == 3  # mean + 2 heads
    assert pg.locator("#head-select").is_disabled()
    top_name = panel.locator(".bar-label").first.inner_text().split(" ", 1)[1]
    # the bars are the first recommendation's own explanation, as the API sends it
    api = httpx.get(f"{page.base}/users/{user}/recommendations",
                    params={"k": 10, "explain": "true"}).json()["items"][0]["explanation"]["because"]
    assert top_name == (api[0]["name"] or api[0]["item"])
    assert shares == [round(100 * b["weight"], 1) for b in api]
    # the heatmap draws the rollout the server computed; its bottom-row summary names the
    # history item that rollout weights most (the explanations start from it)
    seq = httpx.get(f"{page.base}/users/{user}/attention").json()
    last = seq["attention"]["rollout"][-1]
    top = max(range(len(last)), key=last.__getitem__)
    h = next(h for h in seq["history"] if h["position"] == seq["attention"]["offset"] + top)
    assert f"{h['name'] or h['item']} {100 * last[top]:.1f}%" in canvas.get_attribute("aria-label")
    pg.select_option("#layer-select", "0")
    assert "layer 1, mean of heads" in canvas.get_attribute("aria-label")
    pg.select_option("#layer-select", "1")
    pg.select_option("#head-select", "0")
    assert "layer 2, head 1" in canvas.get_attribute("aria-label")
    box = canvas.bounding_box()
    assert box["width"] >= 200 and box["height"] >= 200
    painted = pg.evaluate("""() => {
        const c = document.getElementById('heatmap');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let coloured = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] && d[i] !== d[i + 2]) coloured++;
        return coloured;
    }""")
    assert painted > 1000
    # the model card: dataset, settings, offline metrics, version
    card = pg.locator("#model-card").inner_text()
    assert "synthetic shop" in card and "sasrec-" in card and "NDCG@10" in card
    assert "leave-one-out" in card
    # everything fits a laptop screen's width: no horizontal page scroll
    assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    pg.screenshot(path=str(tmp_path / "explorer-first-visit.png"), full_page=True)
    assert page.errors == []


def test_added_event_changes_the_recommendations(page, server, tmp_path):
    pg = page.page
    pg.goto(page.base + "/?user=u3")
    _wait_for_recs(page)
    before = page.rec_ids()
    n_before = pg.locator("#timeline li.event").count()
    pg.fill("#write-key", KEY)
    chosen = before[0]
    pg.locator("#recs li.rec").first.get_by_role("button", name=re.compile("I viewed")).click()
    pg.wait_for_selector("#recs-status.changed")
    _wait_for_recs(page)
    after = page.rec_ids()
    assert after != before
    assert chosen not in after  # now in the history, so no longer recommended
    assert "Stored: u3 viewed" in pg.inner_text("#event-status")
    assert "The event changed the list" in pg.inner_text("#recs-status")
    # the new event is the newest item of the timeline, marked live
    assert pg.locator("#timeline li.event").count() == n_before + 1
    newest = pg.locator("#timeline li.event").last
    assert newest.get_attribute("data-item") == chosen
    assert "live" in newest.get_attribute("class")
    # changes are marked in the list
    assert pg.locator("#recs .tag.new, #recs .tag.up, #recs .tag.down").count() >= 1
    # the service really stored it
    r = httpx.get(f"{server.url}/users/u3")
    assert r.status_code == 200 and r.json()["stored_events"] == 1
    pg.screenshot(path=str(tmp_path / "explorer-after-event.png"), full_page=True)
    assert page.errors == []


def test_keyboard_only_user_search_item_search_and_heatmap(page):
    pg = page.page
    pg.goto(page.base + "/?user=u0")
    _wait_for_recs(page)
    # type a user id and press Enter
    pg.focus("#user-input")
    pg.keyboard.press("Control+A")
    pg.keyboard.type("u12")
    pg.wait_for_selector("#user-list button[data-user=u12]")
    pg.keyboard.press("Enter")
    expect(pg.locator("#history-summary")).to_contain_text("User u12")
    _wait_for_recs(page)
    # Tab order: the user field is followed by its Load button
    pg.focus("#user-input")
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.textContent") == "Load"
    # find an item, then Tab reaches its Add button
    pg.focus("#item-input")
    pg.keyboard.type("sock")
    pg.wait_for_selector("#item-list button[data-item]")
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.dataset.item") is not None
    # heatmap cells can be read with the arrow keys
    pg.focus("#heatmap")
    pg.keyboard.press("ArrowLeft")
    pg.keyboard.press("ArrowUp")
    readout = pg.inner_text("#heat-readout")
    assert re.search(r"#\d+ .+ → #\d+ .+: \d+(\.\d)?%", readout), readout
    assert page.errors == []


def test_missing_write_key_is_explained(page):
    pg = page.page
    pg.goto(page.base + "/?user=u5")
    _wait_for_recs(page)
    before = page.rec_ids()
    pg.locator("#recs li.rec").first.get_by_role("button", name=re.compile("I viewed")).click()
    pg.wait_for_selector("#event-status.error")
    assert "write key" in pg.inner_text("#event-status")
    assert pg.evaluate("document.activeElement.id") == "write-key"
    assert page.rec_ids() == before
    # the browser itself logs the refused request; nothing else may appear
    assert all("401" in e for e in page.errors), page.errors


def test_anonymous_session(page, tmp_path):
    pg = page.page
    pg.goto(page.base + "/?user=u0")
    _wait_for_recs(page)
    pg.check("input[name=mode][value=session]")
    assert pg.locator("#session-panel").is_visible() and not pg.locator("#user-panel").is_visible()
    assert not pg.locator("#write-key").is_visible()  # sessions are not stored
    pg.fill("#session-input", "i1, i2, nope-404")
    pg.get_by_role("button", name="Recommend for this session").click()
    expect(pg.locator("#history-summary")).to_contain_text("This session: 2 items")
    assert "nope-404" in pg.inner_text("#history-summary")  # unknown ids are reported, not dropped silently
    _wait_for_recs(page)
    before = page.rec_ids()
    pg.fill("#item-input", before[0])
    pg.locator(f"#item-list button[data-item='{before[0]}']").click()
    expect(pg.locator("#history-summary")).to_contain_text("This session: 3 items")
    _wait_for_recs(page)
    assert before[0] not in page.rec_ids()
    assert pg.input_value("#session-input").endswith(before[0])
    assert "3 positions" in pg.locator("#heatmap").get_attribute("aria-label")
    pg.screenshot(path=str(tmp_path / "explorer-session.png"))
    assert page.errors == []


# ---- the JSON and files behind the page (no browser needed) ----------------------------------
def test_page_and_static_files_ship_in_the_package(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    # every asset the page references is served locally (nothing from a CDN)
    refs = re.findall(r'(?:src|href)="([^"#]+)"', r.text)
    assert refs and all(ref.startswith("/") or ref.startswith("data:") for ref in refs), refs
    for ref in refs:
        if ref.startswith("/static/"):
            assert httpx.get(server.url + ref).status_code == 200, ref
    assert httpx.get(server.url + "/static/app.js").headers["content-type"].startswith("text/javascript")
    for bad in ("/static/nope.js", "/static/..%2F..%2Fapp.py", "/static/explorer.py"):
        assert httpx.get(server.url + bad).status_code == 404, bad


def test_attention_json(server):
    r = httpx.get(server.url + "/users/u1/attention")
    assert r.status_code == 200
    body = r.json()
    assert body["known_to_model"] and body["history_total"] == len(body["history"])
    assert body["history"][0]["name"] and body["history"][0]["category"]
    att = body["attention"]
    assert att["n_layers"] == 2 and att["n_heads"] == 2
    assert att["length"] == min(20, body["history_total"])
    assert att["offset"] == body["history_total"] - att["length"]
    for layer in att["layers"]:
        for head in layer:
            for q, row in enumerate(head):
                assert sum(row) == pytest.approx(1.0, abs=1e-3)
                assert all(w == 0 for w in row[q + 1:])  # causal
    assert att["causal"] is True  # declared by SASRec
    # the rollout the page draws: rows sum to 1, causal, and its last row is the query explanation
    rollout = att["rollout"]
    assert len(rollout) == att["length"]
    for q, row in enumerate(rollout):
        assert sum(row) == pytest.approx(1.0, abs=1e-3) and all(w == 0 for w in row[q + 1:])
    # a user nobody has seen yet: empty, not an error (the page lets them start)
    new = httpx.get(server.url + "/users/brand-new/attention").json()
    assert new["history"] == [] and new["attention"] is None and not new["known_to_model"]
    s = httpx.post(server.url + "/sessions/attention", json={"items": ["i3", "i4", "zzz"]}).json()
    assert [h["item"] for h in s["history"]] == ["i3", "i4"] and s["unknown_items"] == ["zzz"]
    assert s["attention"]["length"] == 2
    assert httpx.post(server.url + "/sessions/attention", json={"items": [], "x": 1}).status_code == 422


def test_search_and_model_card_json(server):
    users = httpx.get(server.url + "/explorer/users", params={"q": "u1", "limit": 5}).json()
    assert users["users"][0]["user"] == "u1" and users["total"] == 200
    assert all("u1" in u["user"] for u in users["users"]) and len(users["users"]) == 5
    items = httpx.get(server.url + "/explorer/items", params={"q": "shoe"}).json()
    assert items["matches"] > 0
    assert all("shoe" in (i["name"] + i["category"]).lower() for i in items["items"])
    card = httpx.get(server.url + "/explorer/model").json()
    assert card["model"] == "sasrec" and card["attention"] and card["has_catalogue"]
    assert card["params"]["d_model"] == 16 and "NDCG@10" in card["metrics"]
    assert card["dataset"].startswith("synthetic shop") and len(card["training"]) == 4


def test_model_without_attention_or_catalogue(browser, ease_bundle_plain, tmp_path):
    """EASE, no items.csv: ids instead of names, item-item explanations, no heatmap, no errors."""
    from attnrec.serving import Settings, create_app

    settings = Settings(model_path=ease_bundle_plain, api_key=KEY, watch_model=False,
                        data_dir=tmp_path / "db")
    with LiveServer(create_app(settings)) as live:
        p = Page(browser, live.url)
        try:
            pg = p.page
            pg.goto(live.url + "/")
            _wait_for_recs(p)
            assert re.fullmatch(r"i\d+", pg.locator("#timeline .ev-name").first.inner_text())
            assert pg.locator("#layer-select").is_disabled()
            assert "no attention" in pg.locator("#heatmap").get_attribute("aria-label")
            pg.locator("#recs li.rec").first.get_by_role("button", name="Why?").click()
            assert "item-to-item weights" in pg.locator("#recs .why").first.inner_text()
            assert "none (ids only)" in pg.inner_text("#model-card")
            pg.screenshot(path=str(tmp_path / "explorer-ease.png"))
            assert p.errors == []
        finally:
            p.close()


def test_new_user_starts_from_popular_items(page):
    pg = page.page
    pg.goto(page.base + "/?user=visitor-1")
    _wait_for_recs(page)
    expect(pg.locator("#history-summary")).to_contain_text("has no history yet")
    assert "Popular items" in pg.inner_text("#recs-status")
    assert "no history yet" in pg.locator("#heatmap").get_attribute("aria-label").lower()
    pg.locator("#recs li.rec").first.get_by_role("button", name="Why?").click()
    assert "popular" in pg.locator("#recs .why").first.inner_text()
    before = page.rec_ids()
    pg.fill("#write-key", KEY)
    pg.fill("#item-input", before[0])
    pg.locator(f"#item-list button[data-item='{before[0]}']").focus()
    pg.keyboard.press("Enter")
    expect(pg.locator("#history-summary")).to_contain_text("visitor-1: 1 item")
    expect(pg.locator("#recs-status")).to_contain_text("The event changed the list")
    _wait_for_recs(page)
    assert pg.locator("#timeline li.event.live").count() == 1
    assert before[0] not in page.rec_ids()
    assert page.errors == []


def test_the_page_asks_for_the_read_key(browser, ease_bundle_plain, tmp_path):
    """With a read key, nothing is shown until the key is typed; then the page works as usual."""
    from attnrec.serving import Settings, create_app

    read_key = "explorer-read-key-987"
    settings = Settings(model_path=ease_bundle_plain, api_key=KEY, read_key=read_key, watch_model=False,
                        data_dir=tmp_path / "db", secret="explorer-secret")
    with LiveServer(create_app(settings)) as live:
        p = Page(browser, live.url)
        try:
            pg = p.page
            pg.goto(live.url + "/")
            expect(pg.locator("#event-status")).to_contain_text("needs a key to read")
            assert pg.evaluate("document.activeElement.id") == "write-key"
            assert pg.locator("#recs li.rec").count() == 0
            pg.fill("#write-key", read_key)
            pg.keyboard.press("Enter")
            _wait_for_recs(p)
            assert pg.locator("#recs li.rec").count() > 0
            assert "ease" in pg.inner_text("#model-card").lower()
        finally:
            p.close()


def test_model_card_reads_the_test_figures_of_metrics_json():
    from attnrec.serving.routers.explorer import _test_metrics

    nested = {"protocol": "paper", "validation": {"metrics": {"NDCG@10": 0.07}},
              "test": {"metrics": {"NDCG@10": 0.06}, "n_cases": 3}}
    assert _test_metrics(nested) == {"NDCG@10": 0.06}  # what `attnrec train` writes
    assert _test_metrics({"protocol": "none", "validation": None, "test": None}) == {}
    assert _test_metrics({"NDCG@10": 0.5}) == {"NDCG@10": 0.5}  # older bundles: flat
