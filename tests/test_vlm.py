"""Follow-up questions with tiny random-weight VLMs: prompts, streaming, history, locking and every error path.

Random weights answer gibberish, so these tests check mechanics (exact prompts, input shapes, the streamed
text against a plain generate, history), never language.
"""

import itertools
import threading
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from typer.testing import CliRunner

from indexer.errors import BadInputError, GenerationError, ModelLoadError, NotFoundError
from indexer.indexing import index_folder
from indexer.settings import Settings
from indexer.store import SKIPPED, Image, open_store
from search.cli import app
from search.vlm import (
    Blip2,
    BlipVqa,
    ChatModel,
    Conversation,
    Conversations,
    GenerationOptions,
    Turn,
    VisualQA,
    cut_at,
    load_vlm,
)
from tests.support.model_factory import save_blip2, save_blip_vqa, save_llava
from tests.support.photos import write_photos

PHOTOS = 5
IMAGE_TOKENS = 16  # tiny LLaVA: (32 / 8) ** 2 patches per image


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlms")
    return {
        "blip-2": save_blip2(root / "tiny-blip2"),
        "chat": save_llava(root / "tiny-llava"),
        "blip-vqa": save_blip_vqa(root / "tiny-blip-vqa"),
    }


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, clip_dir) -> Path:
    """A store of five indexed photos, ids 1 to 5."""
    root = tmp_path_factory.mktemp("vlm-store")
    write_photos(root / "photos", PHOTOS, size=(64, 48))
    settings = Settings(store=root / "store", model=str(clip_dir), device="cpu", workers=1, batch_size=8)
    index_folder(root / "photos", settings, show_progress=False)
    return root / "store"


@pytest.fixture(scope="module")
def vlms(vlm_dirs):
    """Each family loaded once through the product's loading code."""
    return {family: load_vlm(str(path), device="cpu") for family, path in vlm_dirs.items()}


def make_qa(store_dir, vlm_dirs, vlms, family: str, **options) -> VisualQA:
    """A VisualQA whose model is the module's already loaded one (loading is tested on its own)."""
    qa = VisualQA(open_store(store_dir), Settings(store=store_dir, vlm=str(vlm_dirs[family]), device="cpu"))
    qa.options = GenerationOptions(**{"max_new_tokens": 6, **options})
    qa._vlm = vlms[family]
    return qa


def plain_answer(qa: VisualQA, conversation: Conversation, question: str) -> str:
    """What greedy generate gives without a streamer, for comparison with the streamed text."""
    vlm = qa.load()
    images = [qa.load_image(i) for i in conversation.images]
    inputs = vlm.inputs(conversation, question, images)
    output = vlm.model.generate(**inputs, **qa.options.generate_kwargs())
    if vlm.family != "blip-vqa":  # decoder-only models return the prompt too
        output = output[:, inputs["input_ids"].shape[1] :]
    text = vlm.processor.tokenizer.decode(output[0], skip_special_tokens=True)
    return text.split(vlm.stop_at)[0].strip() if vlm.stop_at else text.strip()


# --- loading -------------------------------------------------------------------------------------------


def test_family_is_chosen_from_the_config(vlms):
    assert type(vlms["blip-2"]) is Blip2 and vlms["blip-2"].max_images == 1
    assert type(vlms["chat"]) is ChatModel and vlms["chat"].max_images == 4
    assert type(vlms["blip-vqa"]) is BlipVqa and vlms["blip-vqa"].max_images == 1
    assert type(vlms["chat"].model).__name__ == "LlavaForConditionalGeneration"
    assert all(v.model.dtype == torch.float32 and v.model.device.type == "cpu" for v in vlms.values())


def test_dtype_option_is_applied(vlm_dirs):
    vlm = load_vlm(str(vlm_dirs["blip-vqa"]), device="cpu", dtype="bfloat16")
    assert vlm.model.dtype == torch.bfloat16


def test_loading_errors_say_what_to_do(tmp_path, clip_dir, vlm_dirs):
    with pytest.raises(ModelLoadError, match="not a supported VLM"):
        load_vlm(str(clip_dir), device="cpu")
    with pytest.raises(ModelLoadError, match="cannot load VLM"):
        load_vlm(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="4bit loading needs a CUDA GPU"):
        load_vlm(str(vlm_dirs["chat"]), device="cpu", quantize="4bit")
    no_template = save_llava(tmp_path / "llava-no-template")
    (no_template / "chat_template.jinja").unlink()
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_vlm(str(no_template), device="cpu")


# --- prompts and inputs --------------------------------------------------------------------------------


def test_blip2_folds_the_conversation_into_the_prompt(vlms):
    blip2 = vlms["blip-2"]
    conversation = Conversation(images=[1])
    assert blip2.prompt(conversation, "What is a dinosaur holding?") == "Question: What is a dinosaur holding? Answer:"
    conversation.history = [Turn("What is a dinosaur holding?", "a torch", [1]), Turn("Where are they?", "woods")]
    assert blip2.prompt(conversation, "What for?") == (
        "Question: What is a dinosaur holding? Answer: a torch. Question: Where are they? Answer: woods. "
        "Question: What for? Answer:"
    )


def test_blip2_inputs_put_query_tokens_before_the_prompt(vlms, photo_images):
    blip2 = vlms["blip-2"]
    conversation = Conversation(images=[1], history=[Turn("Is it red?", "no", [1])])
    inputs = blip2.inputs(conversation, "Why?", photo_images[:1])
    ids = inputs["input_ids"][0].tolist()
    image_token = blip2.model.config.image_token_index
    queries = blip2.model.config.num_query_tokens
    assert ids[:queries] == [image_token] * queries and image_token not in ids[queries:]
    tokenizer = blip2.processor.tokenizer
    assert ids[queries] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[queries + 1 :]) == "Question: Is it red? Answer: no. Question: Why? Answer:"
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 32, 32)


def test_chat_template_places_each_image_in_the_turn_that_showed_it(vlms):
    chat = vlms["chat"]
    conversation = Conversation(images=[1, 2])
    assert chat.prompt(conversation, "Which is bigger?") == "USER: <image>\n<image>\nWhich is bigger? ASSISTANT:"
    conversation.history.append(Turn("Which is bigger?", "the left one", [1, 2]))
    conversation.add_image(3)
    assert chat.messages(conversation, "And now?")[-1] == {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "And now?"}],
    }
    assert chat.prompt(conversation, "And now?") == (
        "USER: <image>\n<image>\nWhich is bigger? ASSISTANT: the left one USER: <image>\nAnd now? ASSISTANT:"
    )


def test_chat_inputs_hold_every_image(vlms, photo_images):
    chat = vlms["chat"]
    conversation = Conversation(images=[1, 2, 3])
    inputs = chat.inputs(conversation, "Compare them", photo_images[:3])
    assert tuple(inputs["pixel_values"].shape) == (3, 3, 32, 32)
    image_token = chat.model.config.image_token_index
    assert int((inputs["input_ids"] == image_token).sum()) == 3 * IMAGE_TOKENS
    text = chat.processor.tokenizer.decode(inputs["input_ids"][0][inputs["input_ids"][0] != image_token])
    assert text == "<|startoftext|>USER: \n\n\nCompare them ASSISTANT:"


def test_blip_vqa_asks_each_question_on_its_own(vlms):
    conversation = Conversation(images=[1], history=[Turn("Is it red?", "yes", [1])])
    assert vlms["blip-vqa"].prompt(conversation, "How many?") == "How many?"


@pytest.fixture(scope="module")
def photo_images(store_dir):
    qa = VisualQA(open_store(store_dir), Settings(store=store_dir))
    return [qa.load_image(i) for i in range(1, PHOTOS + 1)]


# --- streaming and history -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["blip-2", "chat", "blip-vqa"])
def test_streamed_answer_is_what_generate_says_and_joins_the_history(store_dir, vlm_dirs, vlms, family):
    qa = make_qa(store_dir, vlm_dirs, vlms, family)
    conversation = qa.start(["2"] if family != "chat" else ["2", "3"])
    expected = plain_answer(qa, conversation, "What is it?")
    chunks = list(qa.ask(conversation, "  What is it? "))
    assert "".join(chunks).strip() == expected
    assert all(chunks)
    assert conversation.history == [Turn("What is it?", expected, conversation.images)]
    second = plain_answer(qa, conversation, "Why?")
    assert qa.answer(conversation, "Why?") == second
    assert [t.question for t in conversation.history] == ["What is it?", "Why?"]
    assert conversation.history[1].image_ids == []


def test_answer_streams_in_pieces_in_order(store_dir, vlm_dirs, vlms):
    qa = make_qa(store_dir, vlm_dirs, vlms, "chat", max_new_tokens=12)
    conversation = qa.start(["1"])
    expected = plain_answer(qa, conversation, "Describe it")
    pieces = []
    for chunk in qa.ask(conversation, "Describe it"):
        pieces.append(chunk)
        assert expected.startswith("".join(pieces).strip())  # each piece extends the answer so far
    assert len(pieces) > 1


def test_clear_forgets_questions_but_keeps_images(store_dir, vlm_dirs, vlms):
    qa = make_qa(store_dir, vlm_dirs, vlms, "chat")
    conversation = qa.start(["1", "2"])
    qa.answer(conversation, "First?")
    conversation.add_image(qa.image_id("4"))
    assert conversation.unseen_images() == [4]
    conversation.clear()
    assert conversation.history == [] and conversation.images == [1, 2, 4]
    assert conversation.unseen_images() == [1, 2, 4]
    assert qa.load().prompt(conversation, "Again?") == "USER: <image>\n<image>\n<image>\nAgain? ASSISTANT:"


def test_images_can_be_named_by_stored_path(store_dir, vlm_dirs, vlms):
    qa = make_qa(store_dir, vlm_dirs, vlms, "blip-vqa")
    path = qa.store.paths([3])[3]
    assert qa.start([path, "3"]).images == [3]


def test_sampling_options(store_dir, vlm_dirs, vlms):
    assert GenerationOptions(10, 0.0, 0.5).generate_kwargs() == {"max_new_tokens": 10, "do_sample": False}
    assert GenerationOptions(10, 0.7, 0.9).generate_kwargs() == {
        "max_new_tokens": 10,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    qa = make_qa(store_dir, vlm_dirs, vlms, "blip-2", temperature=0.8, top_p=0.9)
    conversation = qa.start(["1"])
    qa.answer(conversation, "What?")
    assert len(conversation.history) == 1


def test_cut_at_stops_at_the_marker_even_across_chunks():
    assert "".join(cut_at(["a torch ", "Que", "st", "ion: b"], "Question")) == "a torch "
    assert list(cut_at(["a Qu", "iet one"], "Question")) == ["a ", "Quiet one"]
    assert list(cut_at(["Question: x"], "Question")) == []
    assert list(cut_at(["no marker", " at all"], "Question")) == ["no marker", " at all"]
    assert list(cut_at(["ends with Quest"], "Question")) == ["ends with ", "Quest"]


def test_blip2_answer_ends_at_the_next_question_and_generation_stops(store_dir, vlm_dirs, vlms, monkeypatch):
    qa = make_qa(store_dir, vlm_dirs, vlms, "blip-2", max_new_tokens=500)
    tokenizer = vlms["blip-2"].processor.tokenizer
    script = tokenizer.encode(" a dog. Question: what else? Answer: more", add_special_tokens=False)
    told_to_stop = threading.Event()

    def scripted_generate(input_ids, streamer, stopping_criteria, **kwargs):
        """Stand-in for the language model that keeps talking past its answer, as BLIP-2 does."""
        streamer.put(input_ids)
        deadline = time.monotonic() + 30
        for token in itertools.cycle(script):
            if stopping_criteria[0](input_ids, None).all():
                told_to_stop.set()
                break
            if time.monotonic() > deadline:
                break
            streamer.put(torch.tensor([token]))
            time.sleep(0.001)
        streamer.end()

    monkeypatch.setattr(vlms["blip-2"].model, "generate", scripted_generate)
    conversation = qa.start(["1"])
    assert qa.answer(conversation, "What is it?") == "a dog."
    assert conversation.history[0].answer == "a dog."
    assert told_to_stop.is_set()  # generation ended because the answer was cut, not by running out
    assert not [t for t in threading.enumerate() if t.name == "vlm-generate"]


def test_closing_the_stream_stops_generation(store_dir, vlm_dirs, vlms):
    qa = make_qa(store_dir, vlm_dirs, vlms, "chat", max_new_tokens=2000)
    conversation = qa.start(["1"])
    chunks = qa.ask(conversation, "Talk")
    next(chunks)
    started = time.perf_counter()
    chunks.close()  # a reader that went away, e.g. a closed browser tab
    assert time.perf_counter() - started < 5
    assert not [t for t in threading.enumerate() if t.name == "vlm-generate"]
    assert conversation.history == []  # an unfinished answer is not history
    assert not qa.generation_lock.locked()


# --- one at a time, lazily loaded, errors keep the conversation --------------------------------------------


def test_model_loads_on_the_first_question_and_stays(store_dir, vlm_dirs):
    settings = Settings(store=store_dir, vlm=str(vlm_dirs["blip-vqa"]), device="cpu", vlm_max_new_tokens=3)
    qa = VisualQA(open_store(store_dir), settings)
    conversation = qa.start(["1"])
    assert not qa.loaded
    qa.answer(conversation, "What?")
    assert qa.loaded
    model = qa.load().model
    qa.answer(conversation, "Who?")
    assert qa.load().model is model


def test_one_generation_at_a_time(store_dir, vlm_dirs, vlms, monkeypatch):
    qa = make_qa(store_dir, vlm_dirs, vlms, "blip-vqa")
    model = vlms["blip-vqa"].model
    real_generate = model.generate
    spans = []

    def slow_generate(**kwargs):
        start = time.perf_counter()
        time.sleep(0.2)
        result = real_generate(**kwargs)
        spans.append((start, time.perf_counter()))
        return result

    monkeypatch.setattr(model, "generate", slow_generate)
    conversations = [qa.start([str(i)]) for i in (1, 2, 3)]
    threads = [threading.Thread(target=qa.answer, args=(c, "What?")) for c in conversations]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 3
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))
    assert all(len(c.history) == 1 for c in conversations)


def test_generation_error_is_clear_and_the_conversation_goes_on(store_dir, vlm_dirs, vlms, monkeypatch):
    qa = make_qa(store_dir, vlm_dirs, vlms, "blip-2")
    conversation = qa.start(["1"])
    qa.answer(conversation, "First?")
    model = vlms["blip-2"].model
    real_generate = model.generate

    def broken_generate(**kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(model, "generate", broken_generate)
    with pytest.raises(GenerationError, match="failed while answering .*CUDA out of memory.*ask again"):
        qa.answer(conversation, "Second?")
    assert [t.question for t in conversation.history] == ["First?"]
    assert not qa.generation_lock.locked()
    monkeypatch.setattr(model, "generate", real_generate)
    qa.answer(conversation, "Second?")
    assert [t.question for t in conversation.history] == ["First?", "Second?"]


def test_bad_input_errors(store_dir, vlm_dirs, vlms, tmp_path):
    qa = make_qa(store_dir, vlm_dirs, vlms, "blip-2")
    with pytest.raises(NotFoundError, match="999 is not a stored image"):
        qa.start(["999"])
    with pytest.raises(NotFoundError, match="is not a stored image"):
        qa.start([str(2**64)])  # past SQLite's integers
    with pytest.raises(NotFoundError, match="not a stored image"):
        qa.start([str(tmp_path / "elsewhere.jpg")])
    with pytest.raises(BadInputError, match="at least one image"):
        qa.start([])
    conversation = qa.start(["1"])
    with pytest.raises(BadInputError, match="question is empty"):
        qa.ask(conversation, "   ")
    with pytest.raises(BadInputError, match="over 2000 characters"):
        qa.ask(conversation, "why " * 600)
    conversation.add_image(2)
    with pytest.raises(BadInputError, match=r"looks at 1 image\(s\) per question .* has 2"):
        qa.ask(conversation, "Which?")
    chat = make_qa(store_dir, vlm_dirs, vlms, "chat")
    with pytest.raises(BadInputError, match=r"looks at 4 image\(s\) per question .* has 5"):
        chat.ask(chat.start(["1", "2", "3", "4", "5"]), "Which?")
    sampling = make_qa(store_dir, vlm_dirs, vlms, "blip-2", temperature=-1)
    with pytest.raises(BadInputError, match="temperature"):
        sampling.ask(sampling.start(["1"]), "Why?")
    assert not qa.generation_lock.locked()


def test_skipped_or_moved_image_files_are_clear_errors(tmp_path, clip_dir, vlm_dirs, vlms):
    write_photos(tmp_path / "photos", 1, size=(64, 48))
    (tmp_path / "photos" / "notes.jpg").write_text("not an image")
    settings = Settings(store=tmp_path / "store", model=str(clip_dir), device="cpu", workers=1)
    index_folder(tmp_path / "photos", settings, show_progress=False)
    qa = make_qa(tmp_path / "store", vlm_dirs, vlms, "blip-vqa")
    skipped = qa.store.find_path(tmp_path / "photos" / "notes.jpg")
    assert skipped is None  # stored as skipped, so not findable as an image...
    with qa.store.session() as session:
        skipped_id = session.scalar(select(Image.id).where(Image.status == SKIPPED))
    with pytest.raises(NotFoundError, match=f"{skipped_id} is not a stored image"):  # ...nor by its id
        qa.start([str(skipped_id)])
    photo_id = qa.store.find_path(tmp_path / "photos" / "img000.jpg")
    conversation = qa.start([str(photo_id)])
    (tmp_path / "photos" / "img000.jpg").unlink()
    with pytest.raises(NotFoundError, match=f"image {photo_id} is gone .* re-index"):
        qa.ask(conversation, "What?")


def test_conversations_by_id():
    conversations = Conversations()
    conversation = conversations.add(Conversation(images=[1]))
    assert conversations.get(conversation.id) is conversation
    conversations.delete(conversation.id)
    with pytest.raises(NotFoundError, match="no conversation"):
        conversations.get(conversation.id)
    with pytest.raises(NotFoundError, match="no conversation"):
        conversations.delete("nope")


# --- CLI -----------------------------------------------------------------------------------------------


@pytest.fixture
def cli(store_dir, vlm_dirs):
    runner = CliRunner()
    env = {"CLIPDEX_STORE": str(store_dir), "CLIPDEX_DEVICE": "cpu", "CLIPDEX_CPU_RUNTIME": "torch"}
    env["CLIPDEX_VLM_MAX_NEW_TOKENS"] = "4"

    def invoke(*args, vlm="blip-vqa", input=None):
        return runner.invoke(app, [*args, "--vlm", str(vlm_dirs[vlm])], env=env, input=input)

    return invoke


def test_cli_ask_streams_an_answer(cli, store_dir, vlm_dirs, vlms):
    qa = make_qa(store_dir, vlm_dirs, vlms, "chat", max_new_tokens=4)
    expected = plain_answer(qa, qa.start(["1", "2"]), "What differs?")
    result = cli("ask", "1", "2", "What differs?", vlm="chat")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == expected


def stderr_text(result) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def test_cli_ask_errors(cli):
    result = cli("ask", "999", "What?")
    assert result.exit_code == 2 and "999 is not a stored image" in stderr_text(result)
    result = cli("ask", "1", "  ")
    assert result.exit_code == 2 and "question is empty" in stderr_text(result)
    result = cli("ask", "1", "2", "Which?", vlm="blip-2")
    assert result.exit_code == 2 and "looks at 1 image(s)" in stderr_text(result)
    result = cli("ask", "1", "What?", "--quantize", "8bit")
    assert result.exit_code == 2 and "8bit loading needs a CUDA GPU" in stderr_text(result)


def test_cli_chat_commands(cli):
    lines = ["What is it?", "/image 2", "/image 99", "/bogus", "", "Now?", "/clear", "Again?", "/quit", "After quit?"]
    result = cli("chat", "1", vlm="chat", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert "images: 1, 2" in stderr_text(result)
    assert "99 is not a stored image" in stderr_text(result)  # a bad command ends the turn, not the chat
    assert "unknown command /bogus" in stderr_text(result)
    assert "history cleared" in stderr_text(result)
    assert result.stdout.count("> ") == 9  # the prompt came back after every line until /quit


def test_cli_search_ask_uses_the_top_hits(cli):
    result = cli("search", "a red car", "-k", "5", "--ask", "What brand is it?", vlm="chat")
    assert result.exit_code == 0, result.output
    assert "asking about" in stderr_text(result)
    ranked = [int(line.split()[2]) for line in result.stdout.splitlines()[1 : PHOTOS + 1]]
    asked = [int(i) for i in stderr_text(result).split("asking about")[1].split(":")[0].split(",")]
    assert sorted(ranked) == list(range(1, PHOTOS + 1))
    assert asked == ranked[:4]  # as many top hits as the chat model takes in one question
    result = cli("search", "a red car", "--ask", "What brand is it?", vlm="blip-2")
    assert result.exit_code == 0, result.output
    assert len(result.stderr.split("asking about")[1].split(":")[0].split(",")) == 1


# --- HTTP: conversation resource and SSE streaming ---------------------------------------------------------


@pytest.fixture(scope="module")
def client(store_dir, clip_dir, vlm_dirs):
    """The clipdex service over the module's store, its VLM the tiny LLaVA (loaded with the first question)."""
    from fastapi.testclient import TestClient

    from search.api import create_app

    settings = Settings(
        store=store_dir, model=str(clip_dir), device="cpu", vlm=str(vlm_dirs["chat"]), vlm_max_new_tokens=8
    )
    with TestClient(create_app(settings)) as client:
        client.qa = client.app.state.service.visual_qa
        yield client


def events(response) -> list[tuple[str, dict]]:
    """(event, data) pairs of a Server-Sent Events body."""
    import json

    parsed = []
    for block in response.text.strip().split("\n\n"):
        name, data = block.split("\n")
        parsed.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return parsed


def test_api_conversation_round_trip(client):
    created = client.post("/api/conversations", json={"image_ids": [1]})
    assert created.status_code == 201
    conversation = created.json()
    assert conversation["images"] == [1] and conversation["history"] == []
    url = f"/api/conversations/{conversation['id']}"
    client.qa.options.max_new_tokens = 12
    expected = plain_answer(client.qa, client.app.state.conversations.get(conversation["id"]), "Describe it")

    with client.stream("POST", f"{url}/questions", json={"question": "Describe it"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        response.read()
    streamed = events(response)
    assert [name for name, _ in streamed] == ["token"] * (len(streamed) - 1) + ["done"] and len(streamed) > 2
    assert "".join(data["text"] for _, data in streamed[:-1]).strip() == expected
    assert streamed[-1][1] == {"answer": expected}

    history = client.get(url).json()["history"]
    assert history == [{"question": "Describe it", "answer": expected, "image_ids": [1]}]
    assert client.post(f"{url}/images", json={"image_id": 3}).json()["images"] == [1, 3]
    assert client.delete(f"{url}/history").json() == {"id": conversation["id"], "images": [1, 3], "history": []}
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404


def test_api_generation_error_is_an_error_event(client, monkeypatch):
    conversation = client.post("/api/conversations", json={"image_ids": [1]}).json()

    def broken_generate(**kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(client.qa.load().model, "generate", broken_generate)
    response = client.post(f"/api/conversations/{conversation['id']}/questions", json={"question": "What?"})
    (name, data), *_ = events(response)
    assert name == "error" and "out of memory" in data["detail"]
    assert client.get(f"/api/conversations/{conversation['id']}").json()["history"] == []


def test_api_bad_input_is_4xx_before_streaming(client):
    assert client.post("/api/conversations", json={"image_ids": [999]}).status_code == 404
    assert client.post("/api/conversations", json={"image_ids": []}).status_code == 422
    assert client.post("/api/conversations", json={"image_ids": [2**64]}).status_code == 422
    assert client.get("/api/conversations/nope").status_code == 404
    assert client.delete("/api/conversations/nope").status_code == 404
    assert client.post("/api/conversations/nope/questions", json={"question": "Why?"}).status_code == 404
    conversation = client.post("/api/conversations", json={"image_ids": [1, 2, 3, 4, 5]}).json()
    url = f"/api/conversations/{conversation['id']}"
    too_many = client.post(f"{url}/questions", json={"question": "Which?"})
    assert too_many.status_code == 422 and "looks at 4 image(s)" in too_many.json()["detail"]
    empty = client.post(f"{url}/questions", json={"question": "  "})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    assert client.post(f"{url}/images", json={"image_id": 999}).status_code == 404


# --- the web page's "Ask about these" panel, in a real browser ---------------------------------------------


@pytest.fixture(scope="module")
def page_server(store_dir, clip_dir, vlm_dirs):
    """The module's store served over HTTP with the tiny LLaVA; yields (url, app)."""
    from search.api import create_app
    from tests.support.browser import serving

    settings = Settings(
        store=store_dir, model=str(clip_dir), device="cpu", vlm=str(vlm_dirs["chat"]), vlm_max_new_tokens=8
    )
    app = create_app(settings)
    with serving(app) as url:
        yield url, app


def test_page_asks_about_selected_hits_and_streams_the_answer(page_server):
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url, app = page_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(url)
        page.fill("#q", "a photo")
        page.keyboard.press("Enter")
        # The page opens on a browse grid with picks of its own: the ids are read once the search's results replace it.
        page.wait_for_function("document.querySelector('#status').textContent.includes('for “a photo”')")
        page.wait_for_selector("#grid .hit-wrap .pick input")
        assert page.locator("#ask").is_hidden()
        picks = page.locator("#grid .pick input")
        assert picks.count() == PHOTOS
        ids = [int(page.locator("#grid .hit").nth(i).get_attribute("data-id")) for i in range(2)]
        picks.nth(0).check()
        picks.nth(1).check()
        assert page.locator("#ask").is_visible() and page.locator("#ask .chosen img").count() == 2

        page.fill("#ask input[name=question]", "What differs?")
        page.click("#ask button[type=submit]")
        page.wait_for_selector("#ask .answer:not(.pending)")
        (conversation,) = app.state.conversations._items.values()
        assert conversation.images == ids
        assert page.locator("#ask .question").all_inner_texts() == ["What differs?"]
        assert page.locator("#ask .answer").inner_text() == conversation.history[0].answer

        page.click("#ask .clear")
        page.wait_for_function("document.querySelectorAll('#ask .log p').length === 0")
        assert conversation.history == []

        for i in range(2, PHOTOS):  # five images: more than the chat model takes
            picks.nth(i).check()
        page.fill("#ask input[name=question]", "Which?")
        page.click("#ask button[type=submit]")
        page.wait_for_selector("#ask .answer.error")
        assert "looks at 4 image(s)" in page.locator("#ask .answer.error").inner_text()

        page.click("#ask .close")
        assert page.locator("#ask").is_hidden() and not any(picks.nth(i).is_checked() for i in range(PHOTOS))
        browser.close()
