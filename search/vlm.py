"""Follow-up questions about stored images with a vision-language model, streamed token by token.

Three families, told apart by the checkpoint's config:
- BLIP-2 (`Salesforce/blip2-opt-2.7b`...): one image; the conversation so far is folded into a
  "Question: ... Answer: ..." prompt, and the answer ends where the model starts the next "Question".
- any `AutoModelForImageTextToText` checkpoint with a chat template (LLaVA 1.5/NeXT, Idefics2...):
  proper chat messages, each image placed in the user turn that first showed it, several per question.
- BLIP VQA (`Salesforce/blip-vqa-base`): one image, short answers, no memory; cheap enough for a CPU.

A model loads by hub id or local directory through `from_pretrained`, on the first question, and stays
loaded. Generation runs in a thread feeding transformers' `TextIteratorStreamer`, one at a time per model.
"""

import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from indexer.decode import setup_heif, to_rgb
from indexer.errors import BadInputError, GenerationError, ModelLoadError, NotFoundError
from indexer.models.generative import load_pretrained
from indexer.models.loading import canonical_name, pick_device
from indexer.settings import Settings
from indexer.store import INDEXED, Store

MAX_QUESTION_CHARS = 2000
# LLaVA-1.5 spends 576 tokens on each image: four fit its 4,096-token context with room left for the talk.
MAX_CHAT_IMAGES = 4
BLIP2_TURN = "Question: {} Answer: {}."
MAX_IMAGE_ID = 2**63 - 1  # SQLite's integer range


@dataclass
class GenerationOptions:
    """How answers are decoded."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "GenerationOptions":
        return cls(settings.vlm_max_new_tokens, settings.vlm_temperature, settings.vlm_top_p)

    def generate_kwargs(self) -> dict:
        if self.max_new_tokens < 1:
            raise BadInputError("max new tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise BadInputError("temperature must be >= 0 and top-p in (0, 1]")
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


@dataclass
class Turn:
    """One question and its answer; `image_ids` are the images the model was first shown with it."""

    question: str
    answer: str
    image_ids: list[int] = field(default_factory=list)


@dataclass
class Conversation:
    """Stored images under discussion and the questions asked about them so far."""

    images: list[int]
    history: list[Turn] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def add_image(self, image_id: int) -> None:
        """Bring another image into the conversation; it is shown with the next question."""
        if image_id not in self.images:
            self.images.append(image_id)

    def clear(self) -> None:
        """Forget the questions and answers; the images stay."""
        self.history.clear()

    def unseen_images(self) -> list[int]:
        """Images not yet shown to the model in the current history."""
        shown = {i for turn in self.history for i in turn.image_ids}
        return [i for i in self.images if i not in shown]


class VLM:
    """A loaded vision-language model of one family and the processor that feeds it."""

    family = ""
    model_class = ""  # the transformers class that loads this family
    max_images = 1
    stop_at: str | None = None  # text that ends an answer though the model goes on

    def __init__(self, name: str, model, processor):
        self.name, self.model, self.processor = name, model, processor

    def finish_loading(self) -> None:
        """Complete what this family needs from the checkpoint, or raise ModelLoadError when it is missing."""

    def prompt(self, conversation: Conversation, question: str) -> str:
        raise NotImplementedError

    def inputs(self, conversation: Conversation, question: str, images: list[Image.Image]):
        """Model inputs for the next answer: `images` are the conversation's images, in order."""
        batch = self.processor(images=images, text=self.prompt(conversation, question), return_tensors="pt")
        return batch.to(self.model.device, dtype=self.model.dtype)

    def stream(self, inputs, options: GenerationOptions) -> Iterator[str]:
        """Yield the answer's text as it is generated; closing the iterator stops the generation."""
        from transformers import StoppingCriteria, TextIteratorStreamer

        stop = threading.Event()

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                import torch

                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[Exception] = []

        def generate() -> None:
            import torch

            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs, **options.generate_kwargs(), streamer=streamer, stopping_criteria=[StopWhenAsked()]
                    )
            except Exception as e:  # reported to the reader below; the streamer must still end
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=generate, name="vlm-generate", daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            stop.set()
            thread.join()
        if failure:
            e = failure[0]
            raise GenerationError(f"{self.name} failed while answering ({type(e).__name__}: {e}); ask again") from e


class Blip2(VLM):
    """BLIP-2: the conversation lives in the prompt, as in the BLIP-2 chat example."""

    family = "blip-2"
    model_class = "Blip2ForConditionalGeneration"
    stop_at = "Question"

    def prompt(self, conversation: Conversation, question: str) -> str:
        turns = [BLIP2_TURN.format(t.question, t.answer) for t in conversation.history]
        return " ".join([*turns, f"Question: {question} Answer:"])

    def finish_loading(self) -> None:
        if self.processor.num_query_tokens is None:  # processors saved before transformers 4.46 lack it
            self.processor.num_query_tokens = self.model.config.num_query_tokens


class ChatModel(VLM):
    """An image-text-to-text model with a chat template (LLaVA, LLaVA-NeXT, Idefics2...)."""

    family = "chat"
    model_class = "AutoModelForImageTextToText"
    max_images = MAX_CHAT_IMAGES

    def finish_loading(self) -> None:
        if not getattr(self.processor, "chat_template", None):
            raise ModelLoadError(f"{self.name} has no chat template; use a chat VLM such as llava-hf/llava-1.5-7b-hf")

    def messages(self, conversation: Conversation, question: str) -> list[dict]:
        """Chat messages: each image goes into the user turn that first showed it to the model."""
        messages = []
        for turn in conversation.history:
            messages.append(user_message(turn.question, len(turn.image_ids)))
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
        messages.append(user_message(question, len(conversation.unseen_images())))
        return messages

    def prompt(self, conversation: Conversation, question: str) -> str:
        return self.processor.apply_chat_template(
            self.messages(conversation, question), add_generation_prompt=True, tokenize=False
        )


def user_message(text: str, image_count: int) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * image_count + [{"type": "text", "text": text}]}


class BlipVqa(VLM):
    """BLIP visual question answering: a short answer to each question on its own."""

    family = "blip-vqa"
    model_class = "BlipForQuestionAnswering"

    def prompt(self, conversation: Conversation, question: str) -> str:
        return question


def vlm_class(config) -> type[VLM]:
    """The family of a checkpoint, from its config's model type and architectures."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if config.model_type == "blip-2":
        return Blip2
    if config.model_type == "blip" and BlipVqa.model_class in (config.architectures or []):
        return BlipVqa
    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and config.model_type != "blip":
        return ChatModel
    raise ModelLoadError(
        f"{config.model_type!r} is not a supported VLM; use BLIP-2, BLIP VQA or an image-text-to-text chat model"
    )


def load_vlm(name: str, device: str = "auto", dtype: str = "auto", quantize: str = "none", attn: str = "auto") -> VLM:
    """Load a BLIP-2, chat or BLIP VQA model with its processor, by hub id or local directory."""
    import transformers
    from transformers import AutoConfig, AutoProcessor

    name = canonical_name(name)
    torch_device = pick_device(device)
    try:
        config = AutoConfig.from_pretrained(name)
        cls = vlm_class(config)
        model_class = getattr(transformers, cls.model_class)
        if hasattr(model_class, "_model_mapping"):  # an Auto class: the concrete one knows its attention kernels
            model_class = model_class._model_mapping[type(config)]
        model = load_pretrained(model_class, name, torch_device, dtype, quantize, attn)
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load VLM {name!r}: {e}") from None
    vlm = cls(name, model, processor)
    vlm.finish_loading()
    return vlm


def cut_at(chunks: Iterable[str], marker: str) -> Iterator[str]:
    """Pass streamed text through until `marker` appears, holding back a tail that may be its start."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        at = pending.find(marker)
        if at >= 0:
            if pending[:at]:
                yield pending[:at]
            return
        keep = next((n for n in range(min(len(marker) - 1, len(pending)), 0, -1) if marker.startswith(pending[-n:])), 0)
        if len(pending) > keep:
            yield pending[: len(pending) - keep]
            pending = pending[len(pending) - keep :]
    if pending:
        yield pending


class VisualQA:
    """Questions about a store's images; the VLM loads on the first question and stays loaded."""

    def __init__(self, store: Store, settings: Settings, options: GenerationOptions | None = None):
        self.store = store
        self.settings = settings
        self.options = options or GenerationOptions.from_settings(settings)
        self._vlm: VLM | None = None
        self._load_lock = threading.Lock()
        # One generation at a time per model: a second question waits for the first answer to finish.
        self.generation_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._vlm is not None

    def load(self) -> VLM:
        """The VLM, loaded by the first caller; later ones get the same model."""
        with self._load_lock:
            if self._vlm is None:
                s = self.settings
                self._vlm = load_vlm(s.vlm, s.device, s.vlm_dtype, s.vlm_quantize, s.vlm_attn)
            return self._vlm

    def image_id(self, ref: str | int) -> int:
        """A stored image's id from its id or its path; unknown ones are a NotFoundError."""
        ref = str(ref)
        image_id = int(ref) if ref.isdigit() else self.store.find_path(Path(ref).expanduser())
        image = self.store.image(image_id) if image_id is not None and image_id <= MAX_IMAGE_ID else None
        if image is None or image.status != INDEXED:
            raise NotFoundError(f"{ref} is not a stored image id or path; find images by searching first")
        return image_id

    def start(self, refs: Iterable[str | int]) -> Conversation:
        """A new conversation about stored images given by id or path."""
        conversation = Conversation(images=[])
        for ref in refs:
            conversation.add_image(self.image_id(ref))
        if not conversation.images:
            raise BadInputError("a conversation needs at least one image id")
        return conversation

    def load_image(self, image_id: int) -> Image.Image:
        path = Path(self.store.paths([image_id])[image_id])
        setup_heif()
        try:
            with Image.open(path) as img:
                return to_rgb(ImageOps.exif_transpose(img))
        except FileNotFoundError:
            raise NotFoundError(f"image {image_id} is gone from {path}; re-index its folder") from None
        except Exception as e:  # Pillow raises many types on damaged files
            raise BadInputError(f"image {image_id} ({path}) cannot be read: {e}") from None

    def ask(self, conversation: Conversation, question: str) -> Iterator[str]:
        """Check the question and start answering it; iterate to receive the answer as it streams.

        Bad input raises here, before the first token; the finished answer joins the conversation's history.
        """
        question = question.strip()
        if not question:
            raise BadInputError("the question is empty")
        if len(question) > MAX_QUESTION_CHARS:
            raise BadInputError(f"the question is over {MAX_QUESTION_CHARS} characters")
        if not conversation.images:
            raise BadInputError("the conversation has no image; add one first")
        vlm = self.load()
        if len(conversation.images) > vlm.max_images:
            raise BadInputError(
                f"{vlm.name} ({vlm.family}) looks at {vlm.max_images} image(s) per question and this conversation "
                f"has {len(conversation.images)}; start one with fewer images"
            )
        images = [self.load_image(i) for i in conversation.images]
        self.options.generate_kwargs()  # bad options are bad input, reported before streaming starts
        return self._answer(vlm, conversation, question, images)

    def _answer(self, vlm: VLM, conversation: Conversation, question: str, images) -> Iterator[str]:
        with self.generation_lock:
            first_shown = conversation.unseen_images()
            try:
                inputs = vlm.inputs(conversation, question, images)
            except Exception as e:  # the processor rejects inputs the model cannot take (too long...)
                raise GenerationError(f"{vlm.name} cannot take this question: {e}") from e
            raw = vlm.stream(inputs, self.options)
            answer = []
            try:
                for chunk in cut_at(raw, vlm.stop_at) if vlm.stop_at else raw:
                    if chunk:  # the streamer sends empty text while a multi-byte character is incomplete
                        answer.append(chunk)
                        yield chunk
            finally:
                raw.close()  # stops the generation when the answer was cut or the reader went away
            text = "".join(answer).strip()
            conversation.history.append(Turn(question, text, first_shown))

    def answer(self, conversation: Conversation, question: str) -> str:
        """The whole answer at once."""
        return "".join(self.ask(conversation, question)).strip()


class Conversations:
    """Open conversations by id, for the API; safe to use from several request threads."""

    def __init__(self):
        self._items: dict[str, Conversation] = {}
        self._lock = threading.Lock()

    def add(self, conversation: Conversation) -> Conversation:
        with self._lock:
            self._items[conversation.id] = conversation
        return conversation

    def get(self, conversation_id: str) -> Conversation:
        with self._lock:
            conversation = self._items.get(conversation_id)
        if conversation is None:
            raise NotFoundError(f"no conversation {conversation_id!r}; start one with the images' ids")
        return conversation

    def delete(self, conversation_id: str) -> None:
        self.get(conversation_id)
        with self._lock:
            self._items.pop(conversation_id, None)
