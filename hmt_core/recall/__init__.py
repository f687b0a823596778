"""Multi-channel recall: which past segments a question recalls, and why.

- lexical.py: the lexical channel, a BM25 word index over every segment's text (kept in the memory state);
- token_keys.py: the token-key channel, whitened keys of a middle layer's token states, scored by MaxSim;
- sentences.py: the sentence channel, every segment's sentences embedded by a small sentence encoder;
- fusion.py: each channel's scores, standardised and fused into the recall attention (with the memory channel,
  HMT's own recall score); why a passage was recalled.
"""

from .fusion import (Recall, available_channels, channel_scores, embed_sentences, fuse, key_windows,
                     matched_sentence, matched_windows, question_keys, question_vector, recall, standardize)

__all__ = ["Recall", "available_channels", "channel_scores", "embed_sentences", "fuse", "key_windows",
           "matched_sentence", "matched_windows", "question_keys", "question_vector", "recall", "standardize"]
