"""Fitting the answerability probe: the features are the adapter's hidden states at the re-read prompt's end, and a
whole tiny run saves a probe the adapter then loads."""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from test_train_answer import article
from tiny_models import make_backbone, save_tiny_adapter

from hmt_core.answer import chat_ids, reread_messages
from hmt_core.answer_adapter import load_answer_adapter
from hmt_core.answerability import load_probe
from hmt_core.backbone import capture_hidden, final_hidden_states
from hmt_core.training.train_answer import DEV_ARTICLES, passages_for, segment_at
from hmt_core.training.train_answerability import features, main, questions_of

UNANSWERABLE = [{"id": "u", "question": "what is red?", "paragraph": 1}]


def test_features_are_the_adapters_hidden_states_at_the_prompts_end(tmp_path: Path, tokenizer) -> None:
    save_tiny_adapter(tmp_path)
    backbone = make_backbone("llama")
    adapter = load_answer_adapter(backbone, tmp_path)
    pool = questions_of(tokenizer, [article("Tiny")], {"Tiny": UNANSWERABLE}, 16)
    assert [(q["id"], label) for _, q, label in pool] == [("a", 0), ("b", 0), ("u", 1)]
    x = features(backbone, tokenizer, adapter, [2, 1], pool, 1, "test")
    d = backbone.config.hidden_size
    assert x.shape == (3, 2 * d)
    state, q, _ = pool[0]
    passages = passages_for(state, q["question"], segment_at(state, q["answer_starts"][0]), 1)
    assert "12345" in passages[0].text  # an answerable question's prompt holds its gold segment
    ids = torch.tensor([chat_ids(tokenizer, reread_messages(q["question"], passages, adapter.prompt))])
    with torch.no_grad(), adapter.on(), capture_hidden(backbone, [1, 2]) as captured:
        final_hidden_states(backbone, backbone.get_input_embeddings()(ids))
    assert torch.allclose(x[0], torch.cat([captured[2][0, -1], captured[1][0, -1]]), atol=1e-5)


def test_a_tiny_fit_saves_a_probe_the_adapter_loads(tmp_path: Path, tokenizer) -> None:
    model_dir, data, out = tmp_path / "model", tmp_path / "data", tmp_path / "adapter"
    make_backbone("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    save_tiny_adapter(out)
    titles = ["Tiny", *DEV_ARTICLES]
    (data / "squad").mkdir(parents=True)
    (data / "squad/articles.jsonl").write_text("".join(json.dumps(article(t)) + "\n" for t in [*titles, "Held"]))
    (data / "squad/unanswerable.jsonl").write_text(
        "".join(json.dumps({"title": t, "questions": UNANSWERABLE}) + "\n" for t in titles))
    (data / "squad/split.json").write_text(json.dumps({"train": titles, "eval": ["Held"]}))
    main(["--answer-adapter", str(out), "--model", str(model_dir), "--data", str(data), "--per-kind", "2",
          "--dev-per-kind", "1", "--layers", "1", "2", "--segment-length", "16", "--l2", "0.01"])
    probe = load_probe(out)
    assert probe.layers == [1, 2] and probe.weight.shape == (2 * make_backbone("llama").config.hidden_size,)
    with safe_open(str(out / "answerability.safetensors"), "pt") as f:
        record = json.loads(f.metadata()["record"])
    assert record["articles"] == ["Tiny"] and record["dev_articles"] == list(DEV_ARTICLES)
    assert record["scores"]["train"] == {"auc": 1.0, "answerable": 2, "unanswerable": 1}
    assert record["scores"]["dev"]["answerable"] == 1 and record["scores"]["dev"]["unanswerable"] == 1
    assert load_answer_adapter(make_backbone("llama"), out).probe is not None
