"""Training examples: language-modelling windows from text files, and document QA built from SQuAD articles."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..answer import chat_ids

HUB_PREFIX = "hf:"


def read_hub_texts(spec: str) -> list[str]:
    """The 'text' column of a dataset's train split, via the `datasets` library: spec 'hf:NAME' or 'hf:NAME:CONFIG'
    (a hub dataset id, which needs internet, or a local dataset folder)."""
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise ValueError(f"{spec} needs the datasets library: pip install 'datasets>=4,<6'") from err
    name, _, config = spec[len(HUB_PREFIX):].partition(":")
    data = load_dataset(name, config or None, split="train")
    if "text" not in data.column_names:
        raise ValueError(f"{spec} has no 'text' column (columns: {data.column_names})")
    return [t for t in data["text"] if t and t.strip()]


def read_text_files(paths: list[str | Path]) -> list[str]:
    """Texts from .txt files (whole file) and .jsonl files (the 'text' field of every line), folders searched, and
    datasets named 'hf:NAME[:CONFIG]' (see read_hub_texts)."""
    texts = []
    for spec in map(str, paths):
        if spec.startswith(HUB_PREFIX):
            texts += read_hub_texts(spec)
            continue
        path = Path(spec)
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
        for f in files:
            if f.suffix == ".jsonl":
                texts += [json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines() if line]
            else:
                texts.append(f.read_text(encoding="utf-8"))
    if not texts:
        raise ValueError(f"no .txt or .jsonl text found in {paths}")
    return texts


@dataclass
class Example:
    """One training row: token ids, labels (-100 = no loss) and, for QA, the segment that holds the answer."""

    input_ids: list[int]
    labels: list[int]
    answer_segment: int | None = None


class LMWindows:
    """Random windows of a fixed number of tokens from a set of texts (each text tokenized once)."""

    def __init__(self, tokenizer, texts: list[str], window: int):
        self.window = window
        self.ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.ids = [ids for ids in self.ids if len(ids) > window]
        if not self.ids:
            raise ValueError(f"every text is shorter than a training window of {window} tokens")

    def sample(self, rng: random.Random) -> Example:
        ids = rng.choice(self.ids)
        start = rng.randrange(len(ids) - self.window)
        window = ids[start:start + self.window]
        return Example(window, list(window))


class SquadQA:
    """Questions about a document read earlier: a window of whole segments of an article, then questions whose
    answers lie in it, each as a final segment in the chat template with the loss on the answer tokens only;
    answer_segment says which window segment holds the answer (for a recall loss)."""

    def __init__(self, tokenizer, articles: list[dict], doc_segments: int, segment_length: int):
        self.tokenizer = tokenizer
        self.window = doc_segments * segment_length
        self.segment_length = segment_length
        self.end = self.end_tokens(tokenizer)
        self.articles = []  # (ids, [(answer token, question, answer)])
        for article in articles:
            enc = tokenizer(article["context"], add_special_tokens=False, return_offsets_mapping=True)
            ends = [b for _, b in enc["offset_mapping"]]
            questions = [(next(i for i, e in enumerate(ends) if e > q["answer_starts"][0]), q["question"],
                          q["answers"][0]) for q in article["questions"]]
            self.articles.append((enc["input_ids"], questions))

    @staticmethod
    def end_tokens(tokenizer) -> list[int]:
        """What closes an answer: the chat template's end of turn, or EOS when the vocabulary has none."""
        end_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        return [end_turn] if isinstance(end_turn, int) and end_turn != tokenizer.unk_token_id else \
            [tokenizer.eos_token_id]

    def sample_window(self, rng: random.Random, max_questions: int) -> tuple[list[int], list[Example]]:
        """A window of the document (as token ids) and up to max_questions examples about it."""
        while True:
            ids, questions = rng.choice(self.articles)
            start = rng.randrange(max(1, len(ids) - self.window + 1))
            inside = [q for q in questions if start <= q[0] < start + self.window]
            if inside:
                break
        examples = []
        for token, question, answer in rng.sample(inside, min(max_questions, len(inside))):
            prompt = chat_ids(self.tokenizer, [{"role": "user", "content": question}])
            reply = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + self.end
            examples.append(Example(prompt + reply, [-100] * len(prompt) + reply,
                                    (token - start) // self.segment_length))
        return ids[start:start + self.window], examples


class PasskeyQA:
    """Synthetic recall practice: a window of training text with one needle ("The pass key is 12345. Remember it.
    ...") placed inside a random segment, then questions whose answer is the key. The filler is real prose, not the
    repeated sentences of the passkey benchmark, and the benchmark's question is not among these."""

    NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
    QUESTIONS = ("What is the pass key?", "Which number is the pass key mentioned in the text?",
                 "Tell me the pass key.", "What pass key should I remember?")

    def __init__(self, tokenizer, texts_ids: list[list[int]], doc_segments: int, segment_length: int):
        self.tokenizer = tokenizer
        self.segment_length = segment_length
        self.doc_segments = doc_segments
        self.texts_ids = [ids for ids in texts_ids if len(ids) >= doc_segments * segment_length]
        if not self.texts_ids:
            raise ValueError(f"every text is shorter than a passkey window of {doc_segments * segment_length} tokens")
        self.end = SquadQA.end_tokens(tokenizer)

    def sample_window(self, rng: random.Random, max_questions: int) -> tuple[list[int], list[Example]]:
        """A window of prose with the needle inside segment `answer_segment`, and up to max_questions examples."""
        key = str(rng.randint(10000, 99999))
        needle = self.tokenizer(" " + self.NEEDLE.format(key=key) + " ", add_special_tokens=False)["input_ids"]
        L = self.segment_length
        if len(needle) > L:
            raise ValueError(f"the needle ({len(needle)} tokens) does not fit a segment of {L}")
        ids = rng.choice(self.texts_ids)
        start = rng.randrange(len(ids) - self.doc_segments * L + 1)
        window = ids[start:start + self.doc_segments * L - len(needle)]
        segment = rng.randrange(self.doc_segments)
        at = segment * L + rng.randrange(L - len(needle) + 1)
        window = window[:at] + needle + window[at:]
        reply = self.tokenizer(key, add_special_tokens=False)["input_ids"] + self.end
        examples = []
        for question in rng.sample(self.QUESTIONS, min(max_questions, len(self.QUESTIONS))):
            prompt = chat_ids(self.tokenizer, [{"role": "user", "content": question}])
            examples.append(Example(prompt + reply, [-100] * len(prompt) + reply, segment))
        return window, examples


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels [B, T] and answer_segment [B] (-1 where none)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n], mask[row, :n], labels[row, :n] = torch.tensor(e.input_ids), 1, torch.tensor(e.labels)
    answer = torch.tensor([-1 if e.answer_segment is None else e.answer_segment for e in examples])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "answer_segment": answer}
