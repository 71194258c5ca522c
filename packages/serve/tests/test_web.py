"""The pages in a real browser: Chromium from Debian's packages, driven by Playwright for Python, headless, looking up
no outside host, against `huarizo serve` on loopback with the tiny model.

Screenshots go to `$HUARIZO_ARTIFACTS/web/` (else pytest's temporary folder): `ui.png`, `arena.png` (an item before
the vote), `arena-revealed.png` (after it), `login.png`.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import expect

from huarizo.formats.testing import ScriptedServer
from huarizo.serve import RunningServer, ServeConfig, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
KEY = "s3cret-key-for-the-pages"
# the length of the answer on screen, sampled at every animation frame (each frame is what reaches the screen)
SAMPLER = """() => {
  window.frameLengths = [];
  const last = () => [...document.querySelectorAll('.msg.assistant .text')].at(-1);
  const tick = () => {
    const el = last();
    if (el) window.frameLengths.push(el.textContent.length);
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's package), through Playwright."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    expect.set_options(timeout=120_000)  # answers of a model on a busy CPU, not a time limit

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: `$HUARIZO_ARTIFACTS/web`, else a temporary folder."""
    root = os.environ.get("HUARIZO_ARTIFACTS")
    folder = (Path(root) if root else tmp_path_factory.getbasetemp() / "artifacts") / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _send(page: Any, text: str) -> str:
    """Type a message, send it with Enter, wait for the whole answer; returns the answer as shown."""
    answers = page.locator(".msg.assistant")
    before = answers.count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")  # the page adds the answer's box at once, marked as streaming
    expect(answers).to_have_count(before + 1)
    expect(page.locator(".msg.streaming")).to_have_count(0)
    return str(answers.nth(before).locator(".text").text_content())


def _settings(page: Any, max_tokens: int) -> None:
    page.click("details.settings summary")
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", "0")
    page.click("details.settings summary")


def test_chat_streams_a_reply_that_grows_on_screen(browser: Any, server: RunningServer, artifacts: Path) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="none")

    def answer(messages: list[dict[str, str]], max_tokens: int) -> str:
        got = client.chat.completions.create(
            model="tiny-test",
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,  # type: ignore[arg-type]
        )
        return str(got.choices[0].message.content)

    ctx = browser.new_context(viewport={"width": 1200, "height": 820})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = ctx.new_page()
    page.goto(f"{server.url}/ui")
    expect(page.locator("#model-name")).to_have_text("tiny-test")
    expect(page.locator("#template-name")).to_have_text(server.served.template.name)
    _settings(page, 600)  # a long answer: it streams over many frames, even on a busy machine
    page.evaluate(SAMPLER)
    q1 = "Tell me about llamas."
    first = _send(page, q1)
    # the reply was on screen at several lengths before it was whole, and it is the API's own answer
    partial = sorted({n for n in page.evaluate("window.frameLengths") if 0 < n < len(first)})
    assert len(partial) >= 3, partial
    assert first == answer([{"role": "user", "content": q1}], 600)
    _settings(page, 120)

    q2 = "And alpacas?"
    second = _send(page, q2)  # multi-turn: the page sends the whole conversation
    convo = [{"role": "user", "content": q1}, {"role": "assistant", "content": first}, {"role": "user", "content": q2}]
    assert second == answer(convo, 120)
    page.locator(".msg.assistant").nth(1).locator("button.copy").click()
    expect(page.locator(".msg.assistant").nth(1).locator(".note")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == second
    page.screenshot(path=str(artifacts / "ui.png"))

    page.click("#reset")
    expect(page.locator(".msg")).to_have_count(0)
    _settings(page, 900)
    # the browser reads the stream slowly (DevTools network throttling), so the answer is still arriving when Stop
    # is clicked however fast the model writes it
    cdp = ctx.new_cdp_session(page)
    cdp.send("Network.enable")
    slow = {"offline": False, "latency": 0, "uploadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**slow, "downloadThroughput": 2000})
    page.fill("#prompt", "Go on and on.")
    page.press("#prompt", "Enter")
    expect(page.locator(".msg.streaming .text")).to_have_text(re.compile(r"[\s\S]"))
    page.click("#stop")
    expect(page.locator(".msg.assistant .note")).to_have_text("Stopped")
    cdp.send("Network.emulateNetworkConditions", {**slow, "downloadThroughput": -1})
    stopped = str(page.locator(".msg.assistant .text").text_content())
    whole = answer([{"role": "user", "content": "Go on and on."}], 900)
    assert stopped and whole.startswith(stopped) and len(stopped) < len(whole)  # cut where Stop was clicked
    with page.expect_request("**/v1/chat/completions") as sent:
        _send(page, "Then?")
    # after a reset, only this conversation; a stopped answer is kept as far as it was written
    assert json.loads(sent.value.post_data)["messages"] == [
        {"role": "user", "content": "Go on and on."},
        {"role": "assistant", "content": stopped},
        {"role": "user", "content": "Then?"},
    ]
    ctx.close()


def _turns(page: Any, side: str) -> list[str]:
    return [str(t) for t in page.eval_on_selector_all(f"#body-{side} .text", "els => els.map(e => e.textContent)")]


def _shown(page: Any, kit: Any, item: str) -> tuple[str, str]:
    """The models whose answers the page shows as A and B (read from the text on screen)."""
    by_text = {json.dumps(kit.answers[m][int(item)]): m for m in kit.models}
    return by_text[json.dumps(_turns(page, "a"))], by_text[json.dumps(_turns(page, "b"))]


def _start(ctx: Any, url: str, name: str) -> Any:
    page = ctx.new_page()
    page.goto(f"{url}/arena")
    page.fill("#voter-name", name)
    page.click("text=Start voting")
    page.wait_for_selector("#item:not([hidden])")
    return page


def test_arena_session_records_votes_with_the_order_shown_and_resumes(  # type: ignore[no-untyped-def]
    browser: Any, tiny_model_dir: Path, arena_files, kit, tmp_path: Path, artifacts: Path
) -> None:
    out = tmp_path / "arena"
    plan = {"1": "A", "2": "B", "3": "tie", "4": "both_bad", "5": "A"}
    with start_server(kit.config(tiny_model_dir, arena_files, out)) as server:
        ctx = browser.new_context(viewport={"width": 1280, "height": 480})
        page = _start(ctx, server.url, "ana")
        seen: list[tuple[str, tuple[str, str], str]] = []
        for item in ("1", "2", "3"):
            expect(page.locator("#item-id")).to_have_text(f"#{item}")
            expect(page.locator("#progress-text")).to_have_text(f"Item {item} of 5")
            html = page.content()
            assert not any(m in html for m in kit.models)  # blind until the vote
            shown = _shown(page, kit, item)
            if item == "3":  # model output with markup is text, never HTML
                assert page.evaluate("window.__pwned") is None
                expect(page.get_by_text('<img src=x onerror="window.__pwned=1">', exact=False)).to_be_visible()
            if item == "1":
                page.screenshot(path=str(artifacts / "arena.png"), full_page=True)
            page.click(f"#votes button[data-vote='{plan[item]}']")
            expect(page.locator("#after")).to_be_visible()
            expect(page.locator("#reveal-a")).to_have_text(shown[0])
            expect(page.locator("#reveal-b")).to_have_text(shown[1])
            if item == "1":
                page.screenshot(path=str(artifacts / "arena-revealed.png"), full_page=True)
            seen.append((item, shown, plan[item]))
            page.click("#next")
        expect(page.locator("#item-id")).to_have_text("#4")
        before = _shown(page, kit, "4")
        assert len(_turns(page, "a")) == 2  # a two-turn question shows both turns

        page.reload()  # mid-session: nothing lost, on to the next item, in the same order
        expect(page.locator("#progress-text")).to_have_text("Item 4 of 5")
        assert _shown(page, kit, "4") == before
        assert [(v["item"], tuple(v["shown"]), v["vote"]) for v in kit.votes_in(out)] == seen

        other = ctx.new_page()  # the same voter in a second tab, on the same item
        other.goto(f"{server.url}/arena")
        expect(other.locator("#item-id")).to_have_text("#4")
        page.click("#votes button[data-vote='both_bad']")
        expect(page.locator("#after")).to_be_visible()
        seen.append(("4", before, "both_bad"))
        other.click("#votes button[data-vote='A']")  # a second vote on item 4: refused, and the tab moves on
        expect(other.locator("#status")).to_contain_text("ana has already voted on item 4")
        expect(other.locator("#item-id")).to_have_text("#5")

        page.click("#next")
        expect(page.locator("#item-id")).to_have_text("#5")
        last = _shown(page, kit, "5")
        page.keyboard.press("1")  # the keys 1-4 vote too: 1 is A
        expect(page.locator("#after")).to_be_visible()
        seen.append(("5", last, "A"))
        page.keyboard.press("Enter")
        expect(page.locator("#done-text")).to_have_text("You voted on all 5 items. Thank you!")
        expect(page.locator("#progress-text")).to_have_text("5 of 5 voted")

        csrf = page.locator("body").get_attribute("data-csrf")
        again = ctx.request.post(
            f"{server.url}/arena/api/vote",
            data=json.dumps({"item": "2", "vote": "A"}),
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf, "Origin": server.url},
        )
        assert again.status == 409
        ctx.close()
    votes = kit.votes_in(out)
    assert [(v["item"], tuple(v["shown"]), v["vote"]) for v in votes] == seen
    assert {v["voter"] for v in votes} == {"ana"} and all(v["models"] == list(kit.models) for v in votes)
    for v in votes:
        assert v["winner"] == {"A": v["shown"][0], "B": v["shown"][1]}.get(v["vote"], v["vote"])


@pytest.fixture(scope="module")
def two_voters(
    browser: Any, tiny_model_dir: Path, kit: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Two people in two browser contexts voting on every item at the same moment; what each saw and voted."""
    folder = tmp_path_factory.mktemp("two-voters")
    files = kit.write_files(folder / "files")
    out = folder / "arena"
    choices = {"bob": ["A", "B", "A", "tie", "B"], "cy": ["both_bad", "B", "A", "A", "B"]}
    seen: dict[str, list[tuple[str, tuple[str, str], str]]] = {"bob": [], "cy": []}
    with start_server(kit.config(tiny_model_dir, files, out)) as server:
        contexts = {name: browser.new_context() for name in choices}
        pages = {name: _start(ctx, server.url, name) for name, ctx in contexts.items()}
        for k in range(5):
            for name, page in pages.items():
                page.wait_for_selector("#item:not([hidden]) #votes button:not([disabled])")
                item = str(page.locator("#item-id").text_content()).lstrip("#")
                seen[name].append((item, _shown(page, kit, item), choices[name][k]))
            for name, page in pages.items():  # both clicks go out before either vote is answered
                page.click(f"#votes button[data-vote='{choices[name][k]}']")
            for page in pages.values():
                page.wait_for_selector("#after:not([hidden])")
                page.click("#next")
        for ctx in contexts.values():
            ctx.close()
    return {"files": files, "out": out, "seen": seen}


def test_two_browsers_voting_at_once_both_land(two_voters: dict[str, Any], kit: Any) -> None:
    votes = kit.votes_in(two_voters["out"])
    assert len(votes) == 10
    for name, seen in two_voters["seen"].items():
        mine = [(v["item"], tuple(v["shown"]), v["vote"]) for v in votes if v["voter"] == name]
        assert mine == seen


def test_the_judge_audit_of_browser_votes_matches_a_hand_count(
    two_voters: dict[str, Any], kit: Any, tmp_path: Path
) -> None:
    pytest.importorskip("huarizo.judge", reason="huarizo-judge is not installed (the full suite has it)")
    from huarizo.formats.testing import prefer_longer
    from huarizo.judge import GradeConfig, grade

    files, a, b = two_voters["files"], kit.models[0], kit.models[1]
    with ScriptedServer(prefer_longer) as judge:
        cfg = GradeConfig(
            questions=str(files["questions"]),
            answers=[str(files[a])],
            baseline=str(files[b]),
            judge={"model": "openai/judge", "api_base": judge.url, "cache_dir": str(tmp_path / "cache")},
            verdict="text",
            labels=[str(two_voters["out"] / "votes.jsonl")],
            bootstrap=200,
            out=str(tmp_path / "judged"),
        )
        with ThreadPoolExecutor(1) as pool:  # off this thread, where Playwright's event loop runs
            lab = pool.submit(grade, cfg, progress=False).result().summary["label_agreement"]
    # by hand: the judge prefers the longer first answer (the audit reads first turns); a vote's winner is the
    # model shown on its side, a tie or both bad a tie
    longer = {}
    for q in kit.questions:
        la, lb = (len(kit.answers[m][q["question_id"]][0]) for m in (a, b))
        longer[str(q["question_id"])] = a if la > lb else b if lb > la else "tie"
    pairs = []
    for seen in two_voters["seen"].values():
        for item, shown, vote in seen:
            pairs.append((longer[item], {"A": shown[0], "B": shown[1]}.get(vote, "tie")))
    decided = [(j, p) for j, p in pairs if "tie" not in (j, p)]
    assert (lab["labels"], lab["n"], lab["n_decided"]) == (10, 10, len(decided))
    assert lab["agreement_with_ties"] == pytest.approx(sum(j == p for j, p in pairs) / 10)
    assert lab["agreement_without_ties"] == pytest.approx(sum(j == p for j, p in decided) / len(decided))
    wins = sum(p == a for _, p in pairs) + sum(p == "tie" for _, p in pairs) / 2
    (rates,) = lab["win_rates"]
    assert rates["win_rate"] == pytest.approx(wins / 10) and rates["questions"] == 5
    assert rates["judge_win_rate"] == pytest.approx(sum({a: 1, b: 0}.get(w, 0.5) for w in longer.values()) / 5)
    by_item: dict[str, list[str]] = {}
    for seen in two_voters["seen"].values():
        for item, shown, vote in seen:
            by_item.setdefault(item, []).append({"A": shown[0], "B": shown[1]}.get(vote, "tie"))
    same = sum(x == y for x, y in by_item.values())
    assert lab["between_people"]["n"] == 5 and lab["between_people"]["agreement_with_ties"] == pytest.approx(same / 5)


def test_with_a_key_the_pages_need_a_login(  # type: ignore[no-untyped-def]
    browser: Any, tiny_model_dir: Path, arena_files, kit, tmp_path: Path, artifacts: Path
) -> None:
    cfg = kit.config(tiny_model_dir, arena_files, tmp_path / "arena", api_keys=[KEY])
    with start_server(cfg) as server:
        ctx = browser.new_context()
        urls: list[str] = []
        page = ctx.new_page()
        page.on("request", lambda r: urls.append(r.url))
        for path in ("/ui", "/arena"):
            page.goto(f"{server.url}{path}")
            assert page.url == f"{server.url}/login?next={path}"
            expect(page.locator("h1")).to_have_text("Log in")
            assert page.locator("#messages, #item").count() == 0
        assert ctx.request.get(f"{server.url}/arena/api/next").status == 401
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert ctx.request.post(f"{server.url}/v1/chat/completions", data=json.dumps(chat)).status == 401
        page.fill("#key", "wrong key")
        page.click("button.primary")
        expect(page.locator(".error")).to_have_text("Wrong key.")
        page.screenshot(path=str(artifacts / "login.png"))
        page.fill("#key", KEY)
        page.click("button.primary")
        expect(page).to_have_url(f"{server.url}/arena")
        (cookie,) = [c for c in ctx.cookies() if c["name"] == "huarizo_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert "huarizo_session" not in page.evaluate("document.cookie")
        page.goto(f"{server.url}/ui")
        _settings(page, 4)
        assert _send(page, "hi")  # the chat reaches the API with the session, not the key
        assert not any(KEY in u for u in urls)  # the key never went into a URL
        page.click(".logout button")
        expect(page.locator("h1")).to_have_text("Log in")
        page.goto(f"{server.url}/ui")
        assert page.url.startswith(f"{server.url}/login")
        ctx.close()


EVIL = """<!doctype html><title>free llamas</title>
<iframe name="sink"></iframe>
<form id="f" method="post" action="{url}/arena/voter" target="sink">
  <input name="voter" value="mallory"><input name="csrf" value="guessed">
</form>
<script>
(async () => {{
  const frame = document.querySelector("iframe");
  const posted = new Promise((done) => frame.addEventListener("load", done, {{ once: true }}));
  document.getElementById("f").submit();
  await posted;
  const vote = JSON.stringify({{ item: "1", vote: "A" }});
  await fetch("{url}/arena/api/vote", {{ method: "POST", mode: "no-cors", credentials: "include", body: vote }});
  await fetch("{url}/arena/api/vote", {{
    method: "POST", credentials: "include", body: vote,
    headers: {{ "Content-Type": "application/json", "X-CSRF-Token": "guessed" }},
  }}).catch(() => null);
  document.title = "done";
}})();
</script>"""


def test_a_page_of_another_origin_cannot_post_for_the_voter(  # type: ignore[no-untyped-def]
    browser: Any, tiny_model_dir: Path, arena_files, kit, tmp_path: Path
) -> None:
    out = tmp_path / "arena"
    with start_server(kit.config(tiny_model_dir, arena_files, out)) as server:
        body = EVIL.format(url=server.url).encode()

        class Evil(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)  # another port: another origin, the same site
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            ctx = browser.new_context()
            page = _start(ctx, server.url, "ana")
            attack = ctx.new_page()
            attack.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
            expect(attack).to_have_title("done")
            page.reload()
            expect(page.locator("#voter")).to_have_text("ana")
            expect(page.locator("#progress-text")).to_have_text("Item 1 of 5")
            ctx.close()
        finally:
            evil.shutdown()
            evil.server_close()
    assert kit.votes_in(out) == []


@pytest.mark.slow
def test_chat_with_the_embedded_model(browser: Any, artifacts: Path) -> None:
    """The README's screenshot of /ui: the embedded model (Gemma 3 270M base, alpaca template) answering."""
    with start_server(ServeConfig(model="embedded", port=0)) as server:
        ctx = browser.new_context(viewport={"width": 1200, "height": 760})
        page = ctx.new_page()
        page.goto(f"{server.url}/ui")
        expect(page.locator("#template-name")).to_have_text("alpaca")
        _settings(page, 40)
        question = "Give three tips for staying healthy."
        shown = _send(page, question)
        client = openai.OpenAI(base_url=server.base_url, api_key="none")
        got = client.chat.completions.create(
            model="embedded", messages=[{"role": "user", "content": question}], max_tokens=40, temperature=0
        )
        assert shown.strip() and shown == got.choices[0].message.content
        page.screenshot(path=str(artifacts / "ui-embedded.png"))
        ctx.close()


def test_live_arena_answers_a_prompt_the_voter_writes(
    browser: Any, tiny_model_dir: Path, kit: Any, tmp_path: Path
) -> None:
    out = tmp_path / "live"
    reply = "A llama is a domesticated South American camelid."
    with ScriptedServer(lambda req: reply, model="other") as other:
        models = ["served", {"model": "openai/other", "api_base": other.url}]
        arena = {"out": str(out), "models": models, "max_tokens": 16}
        cfg = ServeConfig(model=str(tiny_model_dir), port=0, model_name="tiny-test", dtype="float32", arena=arena)
        with start_server(cfg) as server:
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(f"{server.url}/arena")
            page.fill("#voter-name", "ana")
            page.click("text=Start voting")
            expect(page.locator("#progress-text")).to_have_text("0 votes so far")
            page.fill("#ask-prompt", "What is a llama?")
            page.click("#ask-send")
            expect(page.locator("#item")).to_be_visible()  # both answers appear together
            expect(page.locator("#question")).to_have_text("What is a llama?")
            assert reply in [_turns(page, "a")[0], _turns(page, "b")[0]]
            assert "tiny-test" not in page.content()
            page.keyboard.press("3")  # both are bad
            expect(page.locator("#verdict")).to_contain_text("You voted: both are bad.")
            page.click("#next")
            expect(page.locator("#ask")).to_be_visible()
            expect(page.locator("#progress-text")).to_have_text("1 vote so far")
            ctx.close()
    (vote,) = kit.votes_in(out)
    assert (vote["voter"], vote["item"], vote["vote"], vote["winner"]) == ("ana", "1", "both_bad", "both_bad")
    assert vote["models"] == ["tiny-test", "other"]
