"""HTTP routes for follow-up questions: a conversation resource, and answers streamed as Server-Sent Events.

    POST   /api/conversations                      {"image_ids": [..]}  -> the new conversation (201)
    GET    /api/conversations/{id}                 -> images and history
    DELETE /api/conversations/{id}                 -> 204
    POST   /api/conversations/{id}/images          {"image_id": n}     -> add an image
    DELETE /api/conversations/{id}/history         -> forget the questions, keep the images
    POST   /api/conversations/{id}/questions       {"question": ".."}  -> text/event-stream:
           `event: token` {"text"} ... then `event: done` {"answer"}, or `event: error` {"detail"}

Bad input (unknown ids, empty question, too many images, no such conversation) is rejected before the stream
starts, as a clipdex error the app turns into a 4xx; a failure while generating arrives as an `error` event.
"""

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from indexer.errors import ClipdexError
from search.vlm import MAX_IMAGE_ID, MAX_QUESTION_CHARS, Conversation, VisualQA

# Included in search.api's /api router (API key and error handling come from there); the app's lifespan
# puts a Conversations registry in app.state; the VisualQA is the service's.
router = APIRouter(prefix="/conversations", tags=["questions"])


ImageId = Annotated[int, Field(ge=1, le=MAX_IMAGE_ID)]


class ConversationCreate(BaseModel):
    image_ids: list[ImageId] = Field(min_length=1, max_length=16)


class ImageAdd(BaseModel):
    image_id: ImageId


class QuestionCreate(BaseModel):
    question: str = Field(max_length=MAX_QUESTION_CHARS)


class TurnPublic(BaseModel):
    question: str
    answer: str
    image_ids: list[int]


class ConversationPublic(BaseModel):
    id: str
    images: list[int]
    history: list[TurnPublic]


def get_visual_qa(request: Request) -> VisualQA:
    return request.app.state.service.visual_qa


def get_conversation(request: Request, conversation_id: str) -> Conversation:
    return request.app.state.conversations.get(conversation_id)


VisualQADep = Annotated[VisualQA, Depends(get_visual_qa)]
ConversationDep = Annotated[Conversation, Depends(get_conversation)]


def conversation_public(conversation: Conversation) -> ConversationPublic:
    history = [TurnPublic(question=t.question, answer=t.answer, image_ids=t.image_ids) for t in conversation.history]
    return ConversationPublic(id=conversation.id, images=conversation.images, history=history)


@router.post("", status_code=201)
def create_conversation(body: ConversationCreate, request: Request, qa: VisualQADep) -> ConversationPublic:
    """Start a conversation about stored images."""
    conversation = request.app.state.conversations.add(qa.start(body.image_ids))
    return conversation_public(conversation)


@router.get("/{conversation_id}")
def read_conversation(conversation: ConversationDep) -> ConversationPublic:
    """A conversation's images and its questions and answers so far."""
    return conversation_public(conversation)


@router.delete("/{conversation_id}", status_code=204)
def delete_conversation(conversation_id: str, request: Request) -> Response:
    """End a conversation."""
    request.app.state.conversations.delete(conversation_id)
    return Response(status_code=204)


@router.post("/{conversation_id}/images")
def add_image(body: ImageAdd, conversation: ConversationDep, qa: VisualQADep) -> ConversationPublic:
    """Bring another stored image into the conversation; the model sees it with the next question."""
    conversation.add_image(qa.image_id(body.image_id))
    return conversation_public(conversation)


@router.delete("/{conversation_id}/history")
def clear_history(conversation: ConversationDep) -> ConversationPublic:
    """Forget the questions and answers; the images stay."""
    conversation.clear()
    return conversation_public(conversation)


@router.post("/{conversation_id}/questions", response_class=StreamingResponse)
def ask_question(body: QuestionCreate, conversation: ConversationDep, qa: VisualQADep) -> StreamingResponse:
    """Ask a question; the answer streams as Server-Sent Events (`token`..., then `done` or `error`).

    A plain `def`: checking the question may load the VLM, which blocks, so FastAPI runs it in a thread;
    the answer's iterator is stepped in threads too. Only one answer is generated at a time per model.
    """
    chunks = qa.ask(conversation, body.question)
    headers = {"Cache-Control": "no-cache"}
    return StreamingResponse(answer_events(chunks), media_type="text/event-stream", headers=headers)


def answer_events(chunks: Iterator[str]) -> Iterator[str]:
    """The answer as SSE events: each piece of text, then the whole answer, or the error that ended it."""
    answer = []
    try:
        for chunk in chunks:
            answer.append(chunk)
            yield sse("token", {"text": chunk})
    except ClipdexError as e:
        yield sse("error", {"detail": str(e)})
        return
    yield sse("done", {"answer": "".join(answer).strip()})


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
