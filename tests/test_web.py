"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against uvicorn."""

import json
import os
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from indexer.indexing import index_folder
from indexer.settings import Settings
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
    page.wait_for_function("document.querySelector('#status').textContent.includes('for “a dog on a beach”')")
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
    page.wait_for_function("document.querySelector('#status').textContent.includes('for “beach”')")
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


# --- the front page: the collection newest first, page by page, its folders ------------------------------------------

NAMES_JS = "JSON.stringify([...document.querySelectorAll('#grid .hit')].map(h => h.title.split('\\n')[0]))"
STATUS_JS = "document.querySelector('#status').textContent"


@pytest.fixture(scope="module")
def timeline(tmp_path_factory, clip_dir):
    """30 photos in trips/paris, trips/rome and home, indexed: 25 dated one every 40 days from 2020, and five
    undated ones whose files date from March 2024, so they come first. Yields (URL, paths newest first)."""
    root = tmp_path_factory.mktemp("timeline")
    paths = [
        *write_photos(root / "trips" / "paris", 10, start=0),
        *write_photos(root / "trips" / "rome", 10, start=10),
        *write_photos(root / "home", 10, start=20),
    ]
    for seed in range(25, 30):
        moment = datetime(2024, 3, 10, seed - 20, tzinfo=UTC).timestamp()
        os.utime(paths[seed], (moment, moment))
    settings = Settings(store=tmp_path_factory.mktemp("timeline-store") / "store", model=str(clip_dir), device="cpu")
    index_folder(root, settings, show_progress=False)
    with open_store(settings.store).session() as s:
        for image in s.scalars(select(Image)):
            seed = int(Path(image.relpath).stem[3:])
            image.taken_at = datetime(2020, 1, 1) + timedelta(days=40 * seed) if seed < 25 else None
        s.commit()
    with serving(create_app(settings)) as url:
        yield url, [str(p) for p in reversed(paths)]


def shown(page) -> list[str]:
    return json.loads(page.evaluate(NAMES_JS))


def test_front_page_is_the_collection_newest_first_with_year_and_month_headings(timeline, browser):
    url, newest = timeline
    page = browser.new_page(viewport={"width": 1100, "height": 800}, locale="en-US")
    page.goto(url)
    page.wait_for_function(f"{STATUS_JS}.startsWith('24 photos, newest first')")
    assert shown(page) == newest[:24] and page.evaluate("document.activeElement.id") == "q"
    headings = page.locator("#grid h2, #grid h3").all_inner_texts()
    assert headings[:3] == ["2024", "March 2024", "2022"]  # undated: their files' month; then the newest capture
    years = page.locator("#grid h2").all_inner_texts()
    assert years == ["2024", "2022", "2021", "2020"]
    assert page.locator("#grid .hit .score").count() == 0  # no query, no scores
    page.mouse.wheel(0, 20_000)  # scrolling down loads the next page
    page.wait_for_function("document.querySelectorAll('#grid .hit').length === 30")
    assert shown(page) == newest and page.locator("#more").is_hidden()
    assert page.locator("#grid h2").all_inner_texts() == years  # 2020 goes on: no second heading
    assert page.locator("#hint").is_hidden()

    other = browser.new_page(viewport={"width": 1100, "height": 800})  # the button loads it too
    other.goto(url)
    other.wait_for_function(f"{STATUS_JS}.startsWith('24 photos')")
    other.evaluate("document.querySelector('#more').click()")
    other.wait_for_function("document.querySelectorAll('#grid .hit').length === 30")


def test_folder_view_counts_and_narrows_to_a_folder_to_search_in(timeline, browser):
    url, newest = timeline
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(url)
    page.click("#show-folders")
    page.wait_for_function(f"{STATUS_JS}.startsWith('30 images indexed, 0 skipped')")
    assert page.url.endswith("/?view=folders")
    rows = page.eval_on_selector_all(
        "#grid .folder button",
        "rows => rows.map(r => [r.querySelector('.name').textContent, r.querySelector('.count').textContent])",
    )
    root = str(Path(newest[0]).parent.parent)
    assert rows == [[root, "30"], ["home", "10"], ["trips", "20"], ["paris", "10"], ["rome", "10"]]
    page.locator("#grid .folder button", has_text="rome").click()
    rome = [p for p in newest if "/trips/rome/" in p]
    page.wait_for_function(f"{STATUS_JS}.startsWith('10 photos in {root}/trips/rome, newest first')")
    assert shown(page) == rome and "folder=" in page.url
    assert page.get_attribute("#q", "placeholder") == "Search in rome"
    page.uncheck("input[name=relevant]")
    page.fill("#q", "a photo")
    page.keyboard.press("Enter")
    page.wait_for_function(f"{STATUS_JS}.startsWith('10 results for “a photo”')")  # searched in rome alone
    assert sorted(shown(page)) == sorted(rome)
    page.go_back()  # back to the folder's photos, then to the folders
    page.go_back()
    page.wait_for_function(f"{STATUS_JS}.startsWith('10 photos in')")
    page.go_back()
    page.wait_for_function("document.querySelectorAll('#grid .folder').length === 5")


def test_keyboard_moves_through_the_timeline_and_the_photo_view(timeline, browser):
    url, newest = timeline
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(url)
    page.wait_for_function(f"{STATUS_JS}.startsWith('24 photos')")
    page.keyboard.press("ArrowDown")  # from the search box into the grid
    focused = "document.activeElement.title.split('\\n')[0]"
    assert page.evaluate(focused) == newest[0]
    assert page.evaluate("document.activeElement.matches(':focus-visible')")
    page.keyboard.press("ArrowRight")
    assert page.evaluate(focused) == newest[1]
    page.wait_for_timeout(300)  # the focused photo has risen (a transition): the rows are still the rows
    page.keyboard.press("ArrowDown")  # the nearest photo of the next row: 2022's first, alone in its month
    assert page.evaluate(focused) == newest[5]
    at = page.evaluate(focused)
    page.keyboard.press("Enter")  # opens the photo view
    viewer = page.locator("#viewer")
    viewer.wait_for(state="visible")
    assert viewer.locator("h2").inner_text() == Path(at).name
    page.keyboard.press("ArrowRight")  # the next photo, in the view
    following = newest[newest.index(at) + 1]
    page.wait_for_function(f"document.querySelector('#viewer h2').textContent === '{Path(following).name}'")
    page.keyboard.press("Escape")  # closes it, the focus on the photo shown last
    viewer.wait_for(state="hidden")
    page.wait_for_function(f"{focused} === '{following}'")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")  # past the first row: back to the search box
    assert page.evaluate("document.activeElement.id") == "q"
    page.evaluate("viewImage(document.querySelectorAll('#grid .hit')[23].dataset.id)")  # the last photo loaded
    page.wait_for_function(f"document.querySelector('#viewer h2').textContent === '{Path(newest[23]).name}'")
    page.keyboard.press("ArrowRight")  # goes on into the next page
    page.wait_for_function(f"document.querySelector('#viewer h2').textContent === '{Path(newest[24]).name}'")
    assert page.locator("#grid .hit").count() == 30


def test_front_page_on_a_phone(timeline, browser):
    url, newest = timeline
    page = browser.new_page(viewport={"width": 390, "height": 800}, device_scale_factor=2, is_mobile=True)
    page.goto(url)
    page.wait_for_function(f"{STATUS_JS}.startsWith('24 photos')")
    tops = page.eval_on_selector_all("#grid .hit", "cells => cells.map(c => c.getBoundingClientRect().top)")
    assert tops[0] == tops[1] != tops[2] == tops[3] != tops[4]  # two columns: March 2024's five photos, 2 + 2 + 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    year = page.locator("#grid .year").first.bounding_box()
    assert year["width"] > 300  # the headings span the grid
    page.click("#show-folders")  # the controls stay usable
    page.wait_for_function(f"{STATUS_JS}.startsWith('30 images indexed')")
    page.locator("#grid .folder button", has_text="paris").click()
    page.wait_for_function(f"{STATUS_JS}.startsWith('10 photos in')")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


@contextmanager
def opened(photos: Path, clip_dir, browser, path: str):
    """The folder indexed into a new store beside it, served, and the page opened at `path`."""
    settings = Settings(store=photos.parent / "store", model=str(clip_dir), device="cpu", workers=1, batch_size=4)
    index_folder(photos, settings, show_progress=False)
    with serving(create_app(settings)) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(url + path)
        yield page


def test_marked_duplicates_move_to_the_trash_from_the_page(tmp_path, clip_dir, browser):
    """A person marks a copy to drop: it moves into the root's trash folder (nothing deleted) and its group goes."""
    photos = tmp_path / "photos"
    write_photos(photos, 4)
    (photos / "copy.jpg").write_bytes((photos / "img001.jpg").read_bytes())
    with opened(photos, clip_dir, browser, "/?view=duplicates") as page:
        page.wait_for_selector("#grid .group input.drop")
        assert page.locator("#grid .group").count() == 1 and page.is_hidden("#drop-marked")
        page.check("#grid .group input.drop")
        page.click("#drop-marked")
        page.wait_for_function("/Moved 1 photo to the trash/.test(document.querySelector('#status').textContent)")
        assert page.locator("#grid .group").count() == 0
    kept = [p for p in (photos, photos / ".clipdex-trash") for p in p.glob("*.jpg")]
    assert len(kept) == 5 and len(list((photos / ".clipdex-trash").glob("*.jpg"))) == 1


def test_keywords_filter_the_page_and_show_in_the_photo_view(tmp_path, clip_dir, browser):
    photos = tmp_path / "photos"
    write_photos(photos, 3)
    (photos / "img001.jpg.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag>'
        "<rdf:li>Lisbon</rdf:li><rdf:li>tram</rdf:li></rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    with opened(photos, clip_dir, browser, "/?keyword=lisbon") as page:
        page.wait_for_selector("#grid .hit")
        assert page.locator("#grid .hit").count() == 1 and page.input_value("input[name=keyword]") == "lisbon"
        page.locator("#grid .hit").first.click()
        page.wait_for_selector("dialog[open] dd")
        facts = page.locator("dialog[open] dl").inner_text()
        assert "Keywords" in facts and "Lisbon, tram" in facts
