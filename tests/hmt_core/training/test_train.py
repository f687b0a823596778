import json
import random

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import CORPUS, make_backbone

from hmt_core import load_checkpoint
from hmt_core.training.data import LMWindows, PasskeyQA, SquadQA, collate, read_text_files
from hmt_core.training.train import build_model, main, parse_args, recall_loss


@pytest.fixture
def tiny_folder(tmp_path, tokenizer):
    folder = tmp_path / "tiny"
    make_backbone("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(" ".join(CORPUS * 40))
    context = " ".join(CORPUS * 10) + " The passkey is 4711. " + " ".join(CORPUS * 10)
    article = {"title": "A", "context": context,
               "questions": [{"id": "1", "question": "What is the passkey?", "answers": ["4711"],
                              "answer_starts": [context.index("4711")]}]}
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "articles.jsonl").write_text(json.dumps(article) + "\n")
    (tmp_path / "squad" / "split.json").write_text(json.dumps({"train": ["A"], "eval": []}))
    return tmp_path


def _run(folder, data, out, *extra):
    main(["--model", str(folder), "--texts", str(data / "texts"), "--squad", str(data / "squad"), "--out", str(out),
          "--segment-length", "16", "--sensory-size", "4", "--segments", "3", "--save-every", "2",
          "--recall-loss", "1.0", *extra])


def test_training_runs_logs_saves_and_resumes(tiny_folder, data, tmp_path):
    out = tmp_path / "run"
    _run(tiny_folder, data, out, "--steps", "2")
    _run(tiny_folder, data, out, "--steps", "4")  # resumes at step 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {r["kind"] for r in log} <= {"qa", "lm"} and all(r["loss"] > 0 for r in log)
    model = load_checkpoint(out / "final", make_backbone("llama"))
    assert model.config.segment_length == 16
    # the same seed from scratch reaches the same weights as the resumed run
    _run(tiny_folder, data, tmp_path / "again", "--steps", "4")
    again = load_checkpoint(tmp_path / "again" / "final", make_backbone("llama"))
    assert torch.allclose(again.wq.weight, model.wq.weight, atol=1e-6)


def test_memory_input_norm_defaults_to_each_kinds_own_and_can_be_set(backbone):
    def norm(*argv):
        return build_model(parse_args(["--out", "x", *argv]), backbone).config.memory_input_norm
    assert norm() == "none" and norm("--kind", "rmt") == "embedding"
    assert norm("--memory-input-norm", "embedding") == "embedding"
    assert norm("--kind", "rmt", "--memory-input-norm", "none") == "none"


def test_lora_training_saves_adapters_and_resumes_like_an_uninterrupted_run(tiny_folder, data, tmp_path):
    lora = ["--tune", "lora", "--lora-rank", "4", "--lr", "1e-2"]
    _run(tiny_folder, data, tmp_path / "run", "--steps", "2", *lora)
    _run(tiny_folder, data, tmp_path / "run", "--steps", "4", *lora)  # resumes at step 2, adapters included
    _run(tiny_folder, data, tmp_path / "again", "--steps", "4", *lora)
    resumed = load_file(str(tmp_path / "run" / "final" / "lora.safetensors"))
    again = load_file(str(tmp_path / "again" / "final" / "lora.safetensors"))
    assert resumed.keys() == again.keys() and any("lora_B" in name and v.abs().sum() > 0 for name, v in again.items())
    assert all(torch.allclose(resumed[name], again[name], atol=1e-6) for name in again)
    model = load_checkpoint(tmp_path / "run" / "final", make_backbone("llama"))
    reloaded = load_checkpoint(tmp_path / "again" / "final", make_backbone("llama"))
    assert torch.allclose(model.wq.weight, reloaded.wq.weight, atol=1e-6)


def test_full_tuning_resumes_from_its_own_backbone_and_ships_it(tiny_folder, data, tmp_path):
    full = ["--tune", "full", "--lr", "1e-3"]
    _run(tiny_folder, data, tmp_path / "run", "--steps", "2", *full)
    _run(tiny_folder, data, tmp_path / "run", "--steps", "4", *full)  # resumes at step 2 from run/last/backbone
    _run(tiny_folder, data, tmp_path / "again", "--steps", "4", *full)
    resumed = load_file(str(tmp_path / "run" / "final" / "backbone" / "model.safetensors"))
    again = load_file(str(tmp_path / "again" / "final" / "backbone" / "model.safetensors"))
    start = make_backbone("llama").state_dict()
    assert any(not torch.allclose(again[name], start[name]) for name in again)
    assert all(torch.allclose(resumed[name], again[name], atol=1e-5) for name in again)


def test_training_moves_the_memory_parameters(tiny_folder, data, tmp_path):
    _run(tiny_folder, data, tmp_path / "run", "--steps", "2", "--lr", "1e-2")
    trained = load_checkpoint(tmp_path / "run" / "final", make_backbone("llama"))
    torch.manual_seed(0)
    from hmt_core import HMT, HMTConfig
    fresh = HMT(make_backbone("llama"), HMTConfig(segment_length=16, sensory_size=4))
    assert not torch.allclose(trained.wq.weight, fresh.wq.weight)


def test_qa_examples_point_at_the_segment_holding_the_answer(tokenizer, data):
    article = json.loads((data / "squad" / "articles.jsonl").read_text())
    qa = SquadQA(tokenizer, [article], doc_segments=3, segment_length=16)
    rng = random.Random(0)
    for _ in range(20):
        window, examples = qa.sample_window(rng, max_questions=4)
        assert len(window) == 48 and len(examples) == 1
        ex = examples[0]
        segment = window[ex.answer_segment * 16:(ex.answer_segment + 1) * 16]
        assert " 4" in tokenizer.decode(segment)  # the first token of the answer "4711"
        answer = [t for t, label in zip(ex.input_ids, ex.labels) if label != -100]
        assert tokenizer.decode(answer).startswith("4711")


def test_passkey_examples_hide_the_key_in_the_segment_they_point_at(tokenizer):
    windows = LMWindows(tokenizer, [" ".join(CORPUS * 20)], 256)
    passkeys = PasskeyQA(tokenizer, windows.ids, doc_segments=4, segment_length=48)
    rng = random.Random(0)
    segments = set()
    for _ in range(20):
        window, examples = passkeys.sample_window(rng, max_questions=8)
        assert len(window) == 192 and len(examples) == len(PasskeyQA.QUESTIONS)
        key = tokenizer.decode([t for t, label in zip(examples[0].input_ids, examples[0].labels) if label != -100])
        segment = examples[0].answer_segment
        segments.add(segment)
        assert all(e.answer_segment == segment for e in examples)
        assert f"pass key is {key[:5]}" in tokenizer.decode(window[segment * 48:(segment + 1) * 48])
        assert key[:5].isdigit() and key[:5] not in tokenizer.decode(window[:segment * 48])
    assert segments == {0, 1, 2, 3}


def test_passkey_steps_are_logged_as_such(tiny_folder, data, tmp_path):
    _run(tiny_folder, data, tmp_path / "run", "--steps", "6", "--qa-fraction", "1", "--passkey-fraction", "0.5",
         "--segment-length", "48")
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert set(kinds) == {"qa", "passkey"}


def test_init_recall_summarises_questions_in_padded_batches_as_one_at_a_time(tokenizer, data):
    from hmt_core import HMT, HMTConfig
    from hmt_core.training.train import init_recall_from_windows, read_window
    article = json.loads((data / "squad" / "articles.jsonl").read_text())
    article["questions"] += [{"id": "2", "question": "Which number did the story give as the passkey, please?",
                              "answers": ["4711"], "answer_starts": [article["context"].index("4711")]}]
    qa = SquadQA(tokenizer, [article], doc_segments=3, segment_length=64)
    torch.manual_seed(0)
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=64, sensory_size=4))
    seen = {}
    model.init_recall = lambda summaries, memories: seen.update(summaries=summaries, memories=memories)
    init_recall_from_windows(model, qa, 4, random.Random(0))
    rng, summaries, memories, lengths = random.Random(0), [], [], set()
    for _ in range(4):
        window, examples = qa.sample_window(rng, 32)
        memories.append(read_window(model, window)[0][0])
        for e in examples:
            question = [t for t, label in zip(e.input_ids, e.labels) if label == -100][:32]
            lengths.add(len(question))
            summaries.append(model.summarize(torch.tensor([question]))[0])
    assert lengths == {21, 32}  # so the batches hold padding
    assert seen["summaries"].shape == (8, 32) and torch.equal(seen["memories"], torch.cat(memories))
    assert torch.allclose(seen["summaries"], torch.stack(summaries), atol=1e-5)


def test_continuing_from_a_read_memory_equals_reading_in_one_forward(backbone):
    from hmt_core import HMT, HMTConfig
    from hmt_core.training.train import read_window
    model = HMT(backbone, HMTConfig(segment_length=8, sensory_size=2))
    ids = torch.randint(0, 400, (1, 30))
    whole = model(ids, return_logits=True)
    cache, sensory = read_window(model, ids[0, :24].tolist())
    tail = model(ids[:, 24:], memory_cache=cache, sensory_ids=sensory, return_logits=True)
    assert torch.allclose(tail.logits[0], whole.logits[-1], atol=1e-5)
    assert torch.allclose(tail.recall_weights[0], whole.recall_weights[-1], atol=1e-6)


def test_lm_windows_and_collate(tokenizer):
    windows = LMWindows(tokenizer, [" ".join(CORPUS * 5)], 32)
    batch = collate([windows.sample(random.Random(1)), windows.sample(random.Random(2))], 0)
    assert batch["input_ids"].shape == (2, 32) and bool(batch["attention_mask"].all())
    assert torch.equal(batch["answer_segment"], torch.tensor([-1, -1]))


def test_recall_loss_targets_the_answer_segment():
    weights = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert torch.allclose(recall_loss(weights, torch.tensor([0, -1])), -torch.log(torch.tensor(0.7)))
    assert recall_loss(weights, torch.tensor([-1, -1])) == 0


def test_texts_come_from_files_folders_and_datasets(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text("A whole book.")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "train.jsonl").write_text('{"text": "first row"}\n{"text": ""}\n{"text": "second row"}\n')
    assert read_text_files([tmp_path / "books"]) == ["A whole book."]
    assert read_text_files([f"hf:{tmp_path / 'dataset'}"]) == ["first row", "second row"]  # as a hub id would load
    (tmp_path / "nocol").mkdir()
    (tmp_path / "nocol" / "train.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="no 'text' column"):
        read_text_files([f"hf:{tmp_path / 'nocol'}"])
