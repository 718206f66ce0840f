"""Questions about stored images with a vision-language model (search/vlm.py): `ask`, `chat`, `search --ask`."""

from typing import Annotated, Literal

import typer

from indexer.errors import ClipdexError
from search.cli.common import (
    AttnOpt,
    DeviceOpt,
    QuantizeOpt,
    StoreOpt,
    VlmOpt,
    err,
    make_settings,
    open_service,
    out,
    run,
)
from search.service import Hit, Service

MaxTokensOpt = Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Longest answer, in tokens")]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", min=0.0, help="0 answers greedily; above 0 samples")
]
TopPOpt = Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass")]
DtypeOpt = Annotated[
    Literal["auto", "float32", "float16", "bfloat16"] | None,
    typer.Option("--dtype", help="VLM weights: auto is float16 on CUDA, float32 on CPU"),
]


def open_visual_qa(store, vlm, device, max_new_tokens, temperature, top_p, dtype, quantize, attn):
    """The service's VisualQA, with the VLM flags of `ask` and `chat`; the VLM loads with the first question."""
    settings = make_settings(
        store=store,
        vlm=vlm,
        device=device,
        vlm_max_new_tokens=max_new_tokens,
        vlm_temperature=temperature,
        vlm_top_p=top_p,
        vlm_dtype=dtype,
        vlm_quantize=quantize,
        vlm_attn=attn,
    )
    return open_service(settings).visual_qa


def say_answer(qa, conversation, question: str) -> None:
    """Stream the answer to stdout as it is generated."""
    if not qa.loaded:  # transformers shows the weights' loading progress
        err.print(f"loading {qa.settings.vlm}", highlight=False)
        qa.load()
    with err.status("thinking"):
        chunks = qa.ask(conversation, question)
        first = next(chunks, "")
    typer.echo(first, nl=False)
    for chunk in chunks:
        typer.echo(chunk, nl=False)
    typer.echo()


def ask_command(
    images: Annotated[list[str], typer.Argument(help="Stored image ids or paths", show_default=False)],
    question: Annotated[str, typer.Argument(help="What to ask about the images")],
    store: StoreOpt = None,
    vlm: VlmOpt = None,
    device: DeviceOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = None,
    attn: AttnOpt = None,
) -> None:
    """Ask a vision-language model a question about stored images; the answer streams."""
    qa = open_visual_qa(store, vlm, device, max_new_tokens, temperature, top_p, dtype, quantize, attn)
    conversation = run(qa.start, images)
    run(say_answer, qa, conversation, question)


CHAT_HELP = "/clear forgets the questions, /image ID adds an image, /quit ends"


def chat(
    images: Annotated[list[str], typer.Argument(help="Stored image ids or paths", show_default=False)],
    store: StoreOpt = None,
    vlm: VlmOpt = None,
    device: DeviceOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = None,
    attn: AttnOpt = None,
) -> None:
    """Talk about stored images with a vision-language model, question after question."""
    qa = open_visual_qa(store, vlm, device, max_new_tokens, temperature, top_p, dtype, quantize, attn)
    conversation = run(qa.start, images)
    err.print(CHAT_HELP, highlight=False)
    while True:
        try:
            line = out.input("[bold]> [/bold]").strip()
        except EOFError:
            break
        command, _, arg = line.partition(" ")
        try:
            if command == "/quit":
                break
            elif command == "/clear":
                conversation.clear()
                err.print("history cleared")
            elif command == "/image":
                conversation.add_image(qa.image_id(arg.strip()))
                err.print(f"images: {', '.join(map(str, conversation.images))}", highlight=False)
            elif command.startswith("/"):
                err.print(f"unknown command {command}; {CHAT_HELP}", highlight=False)
            elif line:
                say_answer(qa, conversation, line)
        except ClipdexError as e:  # a bad question or image ends this turn, not the conversation
            err.print(f"[red]error:[/red] {e}", highlight=False)


def ask_about_hits(service: Service, hits: list[Hit], question: str) -> None:
    """`search --ask`: one question about as many of the top hits as the VLM looks at at once."""
    if not hits:
        return
    qa = service.visual_qa
    vlm = run(qa.load)
    conversation = run(qa.start, [h.id for h in hits[: vlm.max_images]])
    err.print(f"asking about {', '.join(map(str, conversation.images))}:", highlight=False)
    run(say_answer, qa, conversation, question)
