"""The playground in headless chromium against the double /v1/solve (recorded SSE streams).

Covers what the page must do with any server: draw the tree as progress events arrive, show the
best program, usage and the final answer, run two strategies side by side, show the server's error
messages, send the API key, stop a run, work from the keyboard and at phone width, and request
nothing outside its own origin.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from playground_support import SolveDouble, assert_same_origin, recorded_events, save_screenshot

expect = pytest.importorskip("playwright.sync_api", reason="playwright not installed").expect

Double = tuple[SolveDouble, str]


def _stream_data(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(progress payloads, result payload) of a recorded stream."""
    progress, result = [], None
    for block in recorded_events(name):
        kind = re.search(r"^event: (\w+)$", block, re.M)
        payload = json.loads(re.search(r"^data: (.*)$", block, re.M).group(1))  # type: ignore[union-attr]
        if kind and kind.group(1) == "progress":
            progress.append(payload)
        elif kind and kind.group(1) == "result":
            result = payload
    assert result is not None
    return progress, result


def test_solve_draws_the_tree_live_then_the_answer(double: Double, new_page: Any) -> None:
    state, url = double
    progress, result = _stream_data("vm_mcts")
    state.gate.clear()  # hold the result back: the page must show the search while it runs
    rec = new_page()
    page = rec.page
    page.goto(url)

    # keyboard only: skip link, then the statement; Ctrl+Enter runs
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "statement"
    page.keyboard.press("Control+A")
    page.keyboard.type("Return the sum of the squares of the even numbers.")
    page.keyboard.press("Control+Enter")

    panel = page.locator(".run")
    expect(panel).to_have_count(1)
    expect(panel.locator(".run-status")).to_have_text("Running…")
    final_nodes = result["tree"]["nodes"]
    expect(panel.locator(".tree li.node")).to_have_count(len(final_nodes))
    last = progress[-1]
    expect(panel.locator('[data-usage="samples"]')).to_have_text(str(last["usage"]["samples"]))
    expect(panel.locator('[data-usage="nodes"]')).to_have_text(str(last["nodes"]))
    expect(panel.locator(".best-code")).to_have_text(last["best_code"])
    expect(panel.locator(".final")).to_be_hidden()
    expect(panel).to_have_attribute("data-progress-events", str(len(progress)))
    # Still before the result: every node sits under its parent with its line, and shows the visits and
    # value that the search's own tree holds at the end (the page backs new nodes up as the search does).
    for node in final_nodes:
        item = panel.locator(f'li.node[data-node-id="{node["id"]}"]')
        summary = item.locator(":scope > details > summary")
        if node["parent"] is not None:
            assert item.evaluate("e => e.parentElement.closest('li.node').dataset.nodeId") == str(node["parent"])
            expect(summary.locator(".node-line")).to_have_text(node["line"] if node["line"].strip() else "(blank line)")
        expect(summary.locator(".node-visits")).to_have_text(f"N {node['visits']}")
        assert abs(float(summary.locator(".node-value").inner_text()) - node["value"]) < 0.0011, node
    save_screenshot(page, "playground-double-running.png")

    state.gate.set()
    expect(panel.locator(".final")).to_be_visible()
    expect(panel.locator(".final-program")).to_have_text(result["program"])
    expect(panel.locator(".candidates > li")).to_have_count(len(result["candidates"]))
    expect(panel.locator(".run-status")).to_contain_text("Done")
    expect(panel.locator('[data-usage="samples"]')).to_have_text(str(result["usage"]["samples"]))
    meta = panel.locator(".final-meta")
    expect(meta).to_contain_text(f"value {result['value']:.3f}")
    expect(meta).to_contain_text(result["policy_version"])
    expect(meta).to_contain_text(result["id"])
    expect(page.locator("#run")).to_be_enabled()
    save_screenshot(page, "playground-double.png")

    [sent] = state.requests
    assert sent["strategy"] == "vm_mcts" and sent["stream"] is True
    assert sent["problem"]["statement"] == "Return the sum of the squares of the even numbers."
    assert sent["budget"]["samples"] == int(page.input_value("#samples"))
    assert sent["max_tokens"] == int(page.input_value("#max-tokens"))
    assert_same_origin(rec.urls, url)


def test_side_by_side_runs_two_strategies_at_once(double: Double, new_page: Any) -> None:
    state, url = double
    state.gate.clear()
    rec = new_page(width=1280)
    page = rec.page
    page.goto(url)
    page.focus("#compare")
    page.keyboard.press("Space")  # the checkbox reveals the second strategy
    expect(page.locator("#strategy-b")).to_be_visible()
    page.select_option("#strategy", "vm_mcts")
    page.select_option("#strategy-b", "greedy")
    page.focus("#samples")
    page.keyboard.press("Enter")  # Enter in a field submits the form

    panels = page.locator(".run")
    expect(panels).to_have_count(2)
    expect(panels.nth(0).locator(".run-title")).to_have_text("A · vm_mcts")
    expect(panels.nth(1).locator(".run-title")).to_have_text("B · greedy")
    expect(panels.nth(0).locator(".tree li.node").first).to_be_visible()
    assert {r["strategy"] for r in state.requests} == {"vm_mcts", "greedy"}
    assert state.max_active == 2  # both streams were open at the same time
    a, b = panels.nth(0).bounding_box(), panels.nth(1).bounding_box()
    assert a and b and b["x"] >= a["x"] + a["width"] and abs(a["y"] - b["y"]) < 1  # side by side

    state.gate.set()
    for i, name in enumerate(["vm_mcts", "greedy"]):
        _, result = _stream_data(name)
        expect(panels.nth(i).locator(".final-program")).to_have_text(result["program"])
    assert len({r["problem"]["statement"] for r in state.requests}) == 1  # the same problem
    save_screenshot(page, "playground-double-side-by-side.png")
    assert_same_origin(rec.urls, url)


def test_invalid_budget_shows_the_servers_message(double: Double, new_page: Any) -> None:
    state, url = double
    rec = new_page()
    page = rec.page
    page.goto(url)
    page.fill("#samples", "-1")
    page.click("#run")
    error = page.locator(".run-error")
    expect(error).to_be_visible()

    # what the server answers to the body the page sent
    body = {"problem": {"statement": page.input_value("#statement")}, "strategy": "vm_mcts",
            "budget": {"samples": -1}, "stream": True}
    answer = httpx.post(url + "v1/solve", json=body).json()["error"]
    expect(error).to_contain_text(answer["message"])
    expect(error).to_contain_text("422")
    assert answer["field"] == "budget.samples"
    expect(page.locator("#samples")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".run-status")).to_have_text("Failed.")
    assert state.requests == []
    save_screenshot(page, "playground-double-error.png")
    assert_same_origin(rec.urls, url)


def test_error_event_in_the_stream_is_shown(double: Double, new_page: Any) -> None:
    state, url = double
    state.streams["beam"] = "error"
    rec = new_page()
    page = rec.page
    page.goto(url)
    page.select_option("#strategy", "beam")
    page.click("#run")
    error = page.locator(".run-error")
    expect(error).to_be_visible()
    [*_, last] = recorded_events("error")
    message = json.loads(last.split("data: ", 1)[1])["error"]["message"]
    expect(error).to_contain_text(message)
    expect(page.locator(".tree li.node").first).to_be_visible()  # progress before the error stays
    expect(page.locator(".final")).to_be_hidden()


def test_api_key_is_sent_as_bearer_token(double: Double, new_page: Any) -> None:
    state, url = double
    state.api_key = "k-123"
    page = new_page().page
    page.goto(url)
    page.click("#run")
    expect(page.locator(".run-error")).to_contain_text("401")
    page.locator(".auth summary").click()
    page.fill("#api-key", "k-123")
    page.click("#run")
    expect(page.locator(".final")).to_be_visible()
    assert state.headers[-1]["authorization"] == "Bearer k-123"


def test_escape_stops_the_run_and_the_server_sees_the_disconnect(double: Double, new_page: Any) -> None:
    state, url = double
    state.gate.clear()
    page = new_page().page
    page.goto(url)
    page.click("#run")
    expect(page.locator(".tree li.node").first).to_be_visible()
    expect(page.locator("#stop")).to_be_enabled()
    page.keyboard.press("Escape")
    expect(page.locator(".run-status")).to_have_text("Stopped.")
    expect(page.locator("#run")).to_be_enabled()
    for _ in range(100):
        if state.cancelled:
            break
        page.wait_for_timeout(50)
    assert state.cancelled == 1


def test_phone_width_fits_without_horizontal_scrolling(double: Double, new_page: Any) -> None:
    _, url = double
    rec = new_page(width=375, height=740)
    page = rec.page
    page.goto(url)
    page.click("#run")
    expect(page.locator(".final")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    for selector in ["#statement", "#strategy", "#samples", "#run", ".run", ".final-program"]:
        box = page.locator(selector).first.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, selector
    save_screenshot(page, "playground-double-phone.png")
    assert_same_origin(rec.urls, url)


def test_crlf_framing_and_comments_in_the_stream_are_understood(double: Double, new_page: Any) -> None:
    state, url = double
    state.crlf = True
    _, result = _stream_data("vm_mcts")
    page = new_page().page
    page.goto(url)
    page.click("#run")
    expect(page.locator(".final-program")).to_have_text(result["program"])
    expect(page.locator(".tree li.node")).to_have_count(len(result["tree"]["nodes"]))


def test_every_control_is_labelled_and_tab_order_follows_the_form(double: Double, new_page: Any) -> None:
    _, url = double
    page = new_page().page
    page.goto(url)
    page.check("#compare")
    page.locator(".auth summary").click()
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels.length).map(e => e.id)")
    assert unlabelled == []
    page.focus("#statement")
    order = ["statement"]
    for _ in range(13):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert order == ["statement", "starter-code", "entry-point", "strategy", "samples", "tokens", "deadline",
                     "max-tokens", "seed", "compare", "strategy-b", "SUMMARY", "api-key", "run"]
