"""Multi-Session Chat (Xu et al., 2022): retrieve the earlier exchanges that help the LM say the next turn.

Source rows follow ``nayohan/msc-raw`` (parquet; splits ``train`` 8,000 / ``valid`` 1,000 / ``test`` 80):
``dataID``, ``{first,second,third,fourth,fifth}_session_dialogue`` (the utterances of each session, the two
speakers alternating) and ``..._session_speakers``. As in the reference's ``chat/msc`` data, an exchange is
``"Speaker 1: <utterance>\\nSpeaker 2: <reply>"``; every Speaker-1 utterance of session 2 onwards is a query,
the reply is the desired output, and the keys are all earlier exchanges of the dialogue (the earlier
sessions and the earlier turns of the current one), most recent last. No labels: the teacher scores
``−NLL(reply | exchange, utterance)`` and the loss distils it (KL, τ_t 0.1). Queries with fewer than
``min_history`` earlier exchanges (too few keys for a group) are not built.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datamodules.errors import DataFormatError
from datamodules.hub import HubTable, iter_rows
from datamodules.jsonl import read_jsonl
from datamodules.llm_embedder_tasks.task_example import SharedSlice, TaskExample

MSC_REPO = "nayohan/msc-raw"
SESSIONS = ("first", "second", "third", "fourth", "fifth")


def exchange_text(utterance: str, reply: str) -> str:
    return f"Speaker 1: {utterance.strip()}\nSpeaker 2: {reply.strip()}"


def session_exchanges(utterances: list[str]) -> list[tuple[str, str]]:
    """Consecutive (utterance, reply) pairs of one session; an unanswered last utterance is dropped."""
    return [(utterances[i], utterances[i + 1]) for i in range(0, len(utterances) - 1, 2)]


def dialogue_sessions(row: dict[str, Any], where: str, line: int | None = None) -> list[list[str]]:
    """The non-empty sessions of one msc-raw row, in order; a session that is not a list of strings is an error."""
    sessions = []
    for name in SESSIONS:
        field = f"{name}_session_dialogue"
        utterances = row.get(field) or []
        if not isinstance(utterances, list) or not all(isinstance(u, str) for u in utterances):
            raise DataFormatError(where, "expected a list of strings", line, field)
        if utterances:
            sessions.append(utterances)
    return sessions


def chat_examples(
    dialogue_id: str, sessions: list[list[str]], min_history: int = 8, max_history: int | None = None
) -> list[TaskExample]:
    """Examples of one dialogue (see the module docstring); ``max_history`` keeps the most recent keys.

    Every example's keys are a :class:`SharedSlice` of the dialogue's one history list (no copy per turn), so
    a dialogue of N exchanges takes O(N) time and memory, not O(N²)."""
    texts: list[str] = []  # the exchanges so far, and their key ids
    ids: list[str] = []
    examples = []
    for s, utterances in enumerate(sessions):
        for t, (utterance, reply) in enumerate(session_exchanges(utterances)):
            if s >= 1 and len(texts) >= min_history and utterance.strip() and reply.strip():
                start = max(0, len(texts) - max_history) if max_history else 0
                examples.append(
                    TaskExample(
                        task="chat",
                        query_id=f"{dialogue_id}-{s + 1}-{t}",
                        query=utterance.strip(),
                        answers=(reply.strip(),),
                        candidates=SharedSlice(texts, start, len(texts)),
                        candidate_ids=SharedSlice(ids, start, len(ids)),
                    )
                )
            texts.append(exchange_text(utterance, reply))
            ids.append(f"{dialogue_id}-{s + 1}-{t}")
    return examples


def chat_from_rows(
    rows: Iterable[tuple[dict[str, Any], str, int | None]],
    min_history: int = 8,
    max_history: int | None = None,
) -> list[TaskExample]:
    """Examples from ``(row, where, line)`` triples of msc-raw rows."""
    examples = []
    for index, (row, where, line) in enumerate(rows):
        dialogue_id = str(row.get("dataID") or row.get("index") or index)
        examples.extend(
            chat_examples(dialogue_id, dialogue_sessions(row, where, line), min_history, max_history)
        )
    return examples


def chat_from_file(
    path: str | Path, min_history: int = 8, max_history: int | None = None
) -> list[TaskExample]:
    """JSON lines in the msc-raw schema (a local copy of the hub rows)."""
    return chat_from_rows(
        ((row, str(path), line) for line, row in read_jsonl(path)), min_history, max_history
    )


def chat_from_hub(
    split: str = "train",
    min_history: int = 8,
    max_history: int | None = None,
    max_dialogues: int | None = None,
) -> list[TaskExample]:
    """``nayohan/msc-raw`` (parquet) with ``datasets``, streamed; ``max_dialogues`` rows at most."""
    table = HubTable(MSC_REPO, split=split)
    rows = iter_rows(table, streaming=True, limit=max_dialogues)
    return chat_from_rows(
        ((row, table.describe(), n) for n, row in enumerate(rows, 1)), min_history, max_history
    )
