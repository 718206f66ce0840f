"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against uvicorn."""

import json
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from indexer.store import Image, open_store
from search.api import create_app
from tests.support.browser import CHROMIUM, serving
from tests.support.photos import write_photos

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(planted):
    """The planted store served over HTTP."""
    with serving(create_app(planted)) as url:
        yield url


def test_search_upload_and_similar_in_a_browser(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server)
    page.wait_for_function("document.activeElement.id === 'q'")  # autofocus, applied once the page renders
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("/")  # brings the focus back to the box
    page.keyboard.type("a dog on a beach")
    page.keyboard.press("Enter")
    page.wait_for_selector("#grid .hit img")
    hits = page.locator("#grid .hit")
    assert hits.count() == 6
    assert "6 results for “a dog on a beach”" in page.locator("#status").inner_text()
    # every thumbnail really loaded (an <img> with a broken src has no natural width)
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#grid .hit .caption").all_inner_texts() == ["a sunny beach"]

    # upload a copy of city/img004.jpg: it comes back first
    query = write_photos(tmp_path, 1, start=4)[0]
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#query-image:not([hidden])")
    page.wait_for_function("document.querySelector('#status').textContent.includes('like img004.jpg')")
    assert page.locator("#grid .hit .name").first.inner_text() == "img004.jpg"
    assert float(page.locator("#grid .hit .score").first.inner_text()) > 0.99

    # click the second hit: the grid shows images like it, not including it
    second = page.locator("#grid .hit").nth(1)
    name = second.locator(".name").inner_text()
    second.click()
    page.wait_for_function(f"document.querySelector('#status').textContent.includes('like {name}')")
    names = page.locator("#grid .hit .name").all_inner_texts()
    assert len(names) == 5 and name not in names

    # keyboard: arrow keys move focus through the grid, Enter asks for similar images
    page.locator("#grid .hit").first.focus()
    page.keyboard.press("ArrowRight")
    focused = page.evaluate("document.activeElement.querySelector('.name').textContent")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#status').textContent.includes('like {focused}')")

    # a filter narrows the grid, and a bad one shows the API's message instead of results
    page.fill("#q", "sunset")
    page.click("summary")
    page.fill("input[name=folder]", "beach")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('3 results')")
    # ranking by captions only: the one captioned beach photo matches "sunny"
    page.fill("#q", "sunny")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#status').textContent.includes('for “sunny”')")
    page.select_option("select[name=mode]", "caption")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('1 result ')")
    assert page.locator("#grid .hit .caption").all_inner_texts() == ["a sunny beach"]
    page.fill("input[name=taken_from]", "2024-02-01")
    page.fill("input[name=taken_to]", "2024-01-01")
    page.wait_for_selector("#status.error")
    assert "taken_from is after taken_to" in page.locator("#status").inner_text()


def test_phone_layout_has_two_columns_and_no_sideways_scroll(server, browser):
    page = browser.new_page(viewport={"width": 390, "height": 800}, device_scale_factor=2)
    page.goto(server)
    page.fill("#q", "beach")
    page.keyboard.press("Enter")
    page.wait_for_selector("#grid .hit img")
    tops = page.eval_on_selector_all("#grid .hit", "cells => cells.map(c => c.getBoundingClientRect().top)")
    assert tops[0] == tops[1] != tops[2]
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_search_is_a_link_and_back_steps_through_searches(server, browser, planted):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(f"{server}/?q=a+dog+on+a+beach&folder=beach")
    page.wait_for_function(
        "document.querySelector('#status').textContent.startsWith('3 results for “a dog on a beach”')"
    )
    assert page.input_value("#q") == "a dog on a beach" and page.input_value("input[name=folder]") == "beach"
    page.fill("#q", "city lights")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#status').textContent.includes('for “city lights”')")
    assert "q=city+lights" in page.url and "folder=beach" in page.url
    page.select_option("select[name=sort]", "oldest")
    with open_store(planted.store).session() as s:  # dated 2021-06-(1 + id): the beach photos in id order
        oldest_first = list(s.scalars(select(Image.relpath).where(Image.relpath.like("beach/%")).order_by(Image.id)))
    names = json.dumps([Path(p).name for p in oldest_first], separators=(",", ":"))  # as JSON.stringify writes
    page.wait_for_function(
        f"JSON.stringify([...document.querySelectorAll('#grid .name')].map(n => n.textContent)) === '{names}'"
    )
    assert "sort=oldest" in page.url
    page.go_back()
    page.wait_for_function("!location.search.includes('sort=oldest')")
    page.go_back()
    page.wait_for_function("document.querySelector('#status').textContent.includes('for “a dog on a beach”')")
    assert page.input_value("#q") == "a dog on a beach"


def test_photo_view_and_more_like_this_but(server, browser):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(f"{server}/?q=sunny")
    page.wait_for_selector("#grid .hit img")
    first = page.locator("#grid .hit-wrap").first
    name = first.locator(".name").inner_text()
    first.hover()
    first.locator(".open").click()
    viewer = page.locator("#viewer")
    viewer.wait_for(state="visible")
    assert viewer.locator("h2").inner_text() == name
    details = viewer.locator("dl").inner_text()
    assert "Taken" in details and "320 × 240 px" in details and "Tags" in details
    page.wait_for_function("document.querySelector('#viewer img').naturalWidth === 320")  # the file, full size
    viewer.locator("input[name=but]").fill("at night")
    viewer.locator("input[name=but]").press("Enter")
    page.wait_for_function(f"document.querySelector('#status').textContent.includes('like {name}, but “at night”')")
    assert not viewer.is_visible() and "like=" in page.url
    names = page.locator("#grid .hit .name").all_inner_texts()
    assert len(names) == 5 and name not in names  # the image itself is left out


def test_duplicates_view_shows_groups_side_by_side(server, browser):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server)
    page.click("#show-duplicates")
    page.wait_for_function("/groups? of copies|No duplicates/.test(document.querySelector('#status').textContent)")
    assert page.url.endswith("/?view=duplicates")
    for group in page.locator("#grid .group").all():
        members = group.locator(".member")
        assert members.count() >= 2 and "keeper" in members.first.get_attribute("class")
    page.reload()  # the view is a link too
    page.wait_for_function("/groups? of copies|No duplicates/.test(document.querySelector('#status').textContent)")


def test_only_relevant_is_on_by_default_and_offers_the_closest_when_nothing_stands_out(lighthouses, browser):
    from indexer.settings import Settings

    with serving(create_app(Settings(store=lighthouses))) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(f"{url}/?q=unicorn")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('Nothing stands out')")
        assert page.locator("#grid .hit").count() == 0
        page.goto(f"{url}/?q=lighthouse")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('5 results')")
        assert "σ" in page.locator("#grid .hit .score").first.inner_text()
        page.uncheck("input[name=relevant]")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('24 results')")
        assert "relevant=false" in page.url
        page.goto(f"{url}/?q=unicorn")  # when nothing stands out, the closest matches are one click away
        page.click("#closest")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('24 results')")
        assert "relevant=false" in page.url and not page.is_checked("input[name=relevant]")


def test_clusters_view_names_groups_and_opens_one(server, browser):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server)
    page.click("#show-clusters")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('2 clusters of 6 images')")
    groups = page.locator("#grid .group")
    assert groups.count() == 2 and page.url.endswith("/?view=clusters")
    sizes = [int(t.split(" · ")[1].split()[0]) for t in page.locator("#grid .group > p").all_inner_texts()]
    assert sum(sizes) == 6 and sizes == sorted(sizes, reverse=True)
    groups.first.locator("button.all").click()
    page.wait_for_function("document.querySelector('#status').textContent.includes('in cluster 1 (')")
    assert page.locator("#grid .hit").count() == sizes[0] and "cluster=1" in page.url
    page.go_back()
    page.wait_for_function("document.querySelectorAll('#grid .group').length === 2")


def test_only_relevant_shows_what_the_plain_ranking_puts_first_in_the_toy_world(toy_world, browser):
    """A common subject, a rarer one and a look-alike search: the default cut-off keeps their true matches."""
    with serving(create_app(toy_world.service.settings)) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        for query in ("something yellow", "a star"):  # 81 and 121 matches: a full first page of them
            page.goto(f"{url}/?{urlencode({'q': query})}")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('24 results')")
        page.goto(f"{url}/?q=a+photo+of+a+green+circle")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('20 results')")
        shown = page.locator("#grid .hit .name").all_inner_texts()
        assert {toy_world.truth[toy_world.ids[name]].label for name in shown} == {"green circle"}
        page.locator("#grid .hit").first.click()  # more like this one: the other green circles
        page.wait_for_function("/^\\d+ results? like/.test(document.querySelector('#status').textContent)")
        similar = page.locator("#grid .hit .name").all_inner_texts()
        assert sum(toy_world.truth[toy_world.ids[name]].label == "green circle" for name in similar) == 19
        assert len(similar) <= 21
