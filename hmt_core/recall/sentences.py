"""The sentence recall channel: every segment's sentences embedded by a small sentence encoder (all-MiniLM-L6-v2,
hmt_core.embedder), a segment scored by the cosine of the question with its best sentence.

The lexical channel finds a question's words and the token keys its tokens; neither finds a sentence that says the
same thing in other words. A sentence encoder does, but only at its own grain: all-MiniLM-L6-v2 reads at most 256
word pieces and was trained on sentence pairs, so a whole 256-token segment is embedded poorly (MiniLM over whole
segments ranks the gold one first for 0.56 of training questions; its best sentence for 0.71). Fused with the other
channels the best sentence adds about 0.04 hit@1 on the training articles (README, 'Recall quality').

It is not part of HMT's memory: like the lexical index it is an index of the text read, and it is reported alone and
fused apart from the memory's channels. Reading embeds the new segments' sentences when a document is finished;
a state that has none yet (saved before this channel, or a chat turn just written) is embedded on its first
question.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..embedder import SentenceEmbedder


# The version of hmt_core.evidence.sentence_spans' rule that the stored vectors were split by: a saved state whose
# vectors were split by another has them embedded again on load (their order would not match the spans). 2: long
# pieces keep their hard-wrapped lines together; 3: a URL's dot at a line end does not end a sentence.
SPLITTING = 3


def segment_sentence_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) spans of one segment's sentences as the channel embeds them (hmt_core.evidence's sentences,
    pieces of three characters or fewer left out)."""
    from ..evidence import sentence_spans  # evidence imports the state, which imports this package

    return [(a, b) for a, b in sentence_spans(text) if b - a > 3]


def segment_sentences(text: str) -> list[str]:
    """The sentences of one segment's text as the channel embeds them."""
    return [text[a:b] for a, b in segment_sentence_spans(text)]


class SentenceIndex:
    """Unit vectors [n, d] (fp16) of the sentences of segments 0..segments-1, and the segment of each [n].

    Tensors are replaced, never modified in place, so a copy can share them and grow on its own."""

    def __init__(self, vectors: torch.Tensor | None = None, owners: torch.Tensor | None = None, segments: int = 0
                 ) -> None:
        self.vectors = vectors if vectors is not None else torch.zeros(0, 0, dtype=torch.float16)
        self.owners = owners if owners is not None else torch.zeros(0, dtype=torch.long)
        self.segments = segments  # how many segments, from the first, the index covers

    def __len__(self) -> int:
        return self.segments

    def copy(self) -> SentenceIndex:
        return SentenceIndex(self.vectors, self.owners, self.segments)

    def update(self, segment_text: Callable[[int], str], num_segments: int, embedder: SentenceEmbedder) -> None:
        """Embed the sentences of the segments not covered yet, up to num_segments (segment_text(i): segment i's)."""
        if self.segments >= num_segments:
            return
        sentences, owners = [], []
        for i in range(self.segments, num_segments):
            for sentence in segment_sentences(segment_text(i)):
                sentences.append(sentence)
                owners.append(i)
        if sentences:
            vectors = embedder.embed(sentences).to(torch.float16)  # [n_new, d]
            old = self.vectors if self.vectors.numel() else vectors[:0]
            self.vectors = torch.cat([old, vectors], 0)
            self.owners = torch.cat([self.owners, torch.tensor(owners, dtype=torch.long)])
        self.segments = num_segments

    def scores(self, question: torch.Tensor, num_segments: int) -> torch.Tensor:
        """[num_segments] float32: each segment's best sentence cosine with the question's unit vector [d]; -inf for a
        segment with no sentence (or not covered), which standardising leaves neutral."""
        out = torch.full((num_segments,), float("-inf"))
        if self.vectors.numel() == 0:
            return out
        sims = self.vectors.float() @ question.float()  # [n]
        keep = self.owners < num_segments
        return out.scatter_reduce(0, self.owners[keep], sims[keep], "amax")

    def best_sentence(self, question: torch.Tensor, segment: int) -> int | None:
        """Which of the segment's sentences (segment_sentences of its text) is closest to the question's unit
        vector [d]; None when the index holds none of it."""
        rows = (self.owners == segment).nonzero().flatten()
        if len(rows) == 0:
            return None
        return int((self.vectors[rows].float() @ question.float()).argmax())

    def select(self, segments: list[int]) -> SentenceIndex:
        """The index of a state that keeps only `segments` (old indices, in their new order), renumbered; what it
        did not cover is left to embed again."""
        count = sum(1 for s in segments if s < self.segments)  # kept segments ascend: covered ones come first
        new_index = {old: new for new, old in enumerate(segments[:count])}
        old_owners = self.owners.tolist()
        keep = torch.tensor([o in new_index for o in old_owners], dtype=torch.bool)
        owners = torch.tensor([new_index[o] for o in old_owners if o in new_index], dtype=torch.long)
        return SentenceIndex(self.vectors[keep], owners, count)

    def extended(self, other: SentenceIndex, offset: int) -> SentenceIndex:
        """This index followed by other's, whose segments come after this state's `offset` ones; it covers only
        this one's part unless this one covers all `offset` segments."""
        if self.segments < offset or other.segments == 0:
            return self.copy()
        if self.vectors.numel() == 0:
            return SentenceIndex(other.vectors, other.owners + offset, offset + other.segments)
        if other.vectors.numel() == 0:
            return SentenceIndex(self.vectors, self.owners, offset + other.segments)
        return SentenceIndex(torch.cat([self.vectors, other.vectors.to(self.vectors.dtype)], 0),
                             torch.cat([self.owners, other.owners + offset]), offset + other.segments)
