"""Training the answer adapter: prompts cut as the app cuts them, loss on the answer only, a whole tiny run; and
fitting the not-found rule."""

import json
from pathlib import Path

import pytest
import torch
from tiny_models import CORPUS, make_backbone

from hmt_core import HMT, HMTConfig
from hmt_core.answer import ANSWER_PROMPT, NOT_FOUND
from hmt_core.answer_adapter import add_answer_lora, load_answer_adapter
from hmt_core.training.fit_not_found import choose, choose_reader
from hmt_core.training.fit_recall import read_document
from hmt_core.training.lora import linear_layer_names
from hmt_core.training.train_answer import build_examples, example_loss, main, segment_at, text_state

PARAGRAPHS = [CORPUS[0] + " " + CORPUS[1], CORPUS[2], CORPUS[3] + " " + CORPUS[0]]


def article(title: str = "Tiny") -> dict:
    context = "\n\n".join(PARAGRAPHS)
    spans, start = [], 0
    for p in PARAGRAPHS:
        spans.append([start, start + len(p)])
        start += len(p) + 2
    at = context.index("12345")
    return {"title": title, "context": context, "paragraph_spans": spans,
            "questions": [{"id": "a", "question": "what is the passkey?", "answers": ["12345"], "answer_starts": [at]},
                          {"id": "b", "question": "who is Ishmael?", "answers": ["me"],
                           "answer_starts": [context.index("me Ishmael")]}]}


def test_text_state_cuts_segments_as_reading_does(tokenizer) -> None:
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=16, sensory_size=4))
    read = read_document(model, tokenizer, PARAGRAPHS, "Tiny")
    cut = text_state(tokenizer, "Tiny", PARAGRAPHS, 16)
    assert [(s.char_start, s.char_end, s.num_tokens) for s in cut.segments] == \
           [(s.char_start, s.char_end, s.num_tokens) for s in read.segments]
    assert cut.sources["Tiny"].text == read.sources["Tiny"].text
    assert len(cut.lexical) == cut.num_segments


def test_examples_hold_the_gold_passage_or_say_not_found(tokenizer) -> None:
    a = article()
    unanswerable = {"Tiny": [{"id": "u", "question": "what is the fox's name?", "paragraph": 0, "answers": []}]}
    examples = build_examples(tokenizer, [a], unanswerable, 2, 1, 16, three=1.0)
    assert sorted(e["kind"] for e in examples) == ["answer", "answer", "not_found"]
    state = text_state(tokenizer, "Tiny", PARAGRAPHS, 16)
    for e in examples:
        prompt = tokenizer.decode(e["prompt"])
        assert ANSWER_PROMPT in prompt and e["passages"] == 3
        if e["kind"] == "not_found":
            assert e["target"] == NOT_FOUND
        else:
            q = next(q for q in a["questions"] if q["answers"][0] == e["target"])
            gold = state.segments[segment_at(state, q["answer_starts"][0])]
            assert state.sources["Tiny"].text[gold.char_start:gold.char_end].strip()[:20] in prompt
    assert all(e["passages"] == 1 for e in build_examples(tokenizer, [a], unanswerable, 2, 1, 16, three=0.0))


def test_loss_is_on_the_answer_and_trains_only_the_adapter(tokenizer) -> None:
    backbone = make_backbone("llama")
    add_answer_lora(backbone, 4, 8.0, 0.0, linear_layer_names(backbone), [1])
    for name, p in backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer("Question: what is the passkey? Answer:")["input_ids"]
    loss = example_loss(backbone, tokenizer, prompt, " 12345", end)
    loss.backward()
    grads = {n for n, p in backbone.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n and "layers.1." in n for n in grads)
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        example_loss(backbone, tokenizer, prompt, " 12345", end).backward()
        optimizer.step()
    assert example_loss(backbone, tokenizer, prompt, " 12345", end).item() < loss.item()


def test_a_tiny_training_run_saves_an_adapter_that_loads(tmp_path: Path, tokenizer) -> None:
    model_dir, data, out = tmp_path / "model", tmp_path / "data", tmp_path / "out"
    make_backbone("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (data / "squad").mkdir(parents=True)
    (data / "squad/articles.jsonl").write_text(json.dumps(article("Tiny")) + "\n" + json.dumps(article("Held")) + "\n")
    (data / "squad/unanswerable.jsonl").write_text(
        json.dumps({"title": "Tiny", "questions": [{"id": "u", "question": "what is red?", "paragraph": 1}]}) + "\n"
        + json.dumps({"title": "Held", "questions": []}) + "\n")
    (data / "squad/split.json").write_text(json.dumps({"train": ["Tiny"], "eval": ["Held"]}))
    main(["--out", str(out), "--model", str(model_dir), "--data", str(data), "--answerable", "2", "--not-found", "1",
          "--accumulate", "2", "--first-layer", "1", "--segment-length", "16", "--rank", "2"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    assert not (out / "checkpoint.pt").exists()
    settings = json.loads((out / "answer_adapter.json").read_text())
    assert settings["training"]["articles"] == ["Tiny"] and settings["training"]["examples"] == 3
    assert settings["lora"]["layers"] == [1] and settings["prompt"] == ANSWER_PROMPT
    adapter = load_answer_adapter(make_backbone("llama"), out)
    assert adapter.layers and adapter.not_found == NOT_FOUND


def test_choose_keeps_the_confidence_that_separates_best() -> None:
    samples = []
    for i in range(100):
        samples.append({"kind": "answerable", "fused_top": 2 + i / 100, "weight_top": i / 100,
                        "lexical_per_term": 1.0, "token_per_key": 1.0})
        samples.append({"kind": "squad2", "fused_top": 1.0, "weight_top": i / 100, "lexical_per_term": 1.0,
                        "token_per_key": 1.0})
        samples.append({"kind": "other_article", "fused_top": 1.5, "weight_top": i / 100, "lexical_per_term": 1.0,
                        "token_per_key": 1.0})
    kind, below, candidates = choose(samples, 0.05)
    assert kind == "fused_top" and below == pytest.approx(2.05)
    assert candidates["fused_top"]["not_found_rate"] == {"answerable": 0.05, "squad2": 1.0, "other_article": 1.0}


def test_choose_reader_adds_the_adapters_threshold_past_the_recall_rule() -> None:
    samples = [{"kind": "answerable", "token_per_key": 0.0 if i < 5 else 1.0, "reader": -3.0 + i / 100}
               for i in range(100)]
    samples += [{"kind": "squad2", "token_per_key": 1.0, "reader": -1.0 - i / 100} for i in range(10)]
    samples += [{"kind": "other_article", "token_per_key": 0.0, "reader": -5.0} for _ in range(10)]
    above, rates = choose_reader(samples, "token_per_key", 0.5, 0.04)
    assert above == pytest.approx(-3.0 + 95 / 100)  # four answerable questions above it, past the recall's five
    assert rates["answerable"] == {"recall": 0.05, "reader": 0.04, "either": 0.09}
    assert rates["squad2"]["reader"] == 1.0 and rates["other_article"] == {"recall": 1.0, "reader": 0.0, "either": 1.0}
