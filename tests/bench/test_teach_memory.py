"""Teaching the memory channel: sentence cutting, pair sets, ranking with ties, and a training run on toy features."""

import torch

from bench import teach_memory


def toy_article(n: int, d: int, noise: float) -> dict:
    memories = torch.randn(n, d)
    owner = list(range(n)) * 2
    return {"segments": n, "memories": memories, "sentence_segment": owner,
            "sentence_summaries": memories[owner] + noise * torch.randn(2 * n, d),
            "question_summaries": memories[:3] + noise * torch.randn(3, d), "question_gold": [[0], [1, 2], []]}


def test_sentences_are_cut_at_sentence_ends_and_short_pieces_dropped():
    text = ('The Normans (Norman: Nourmands) were a people. Too short. In 1066 "William" came to England.\n'
            "A new line starts.")
    assert teach_memory.sentences(text, min_words=4) == [
        "The Normans (Norman: Nourmands) were a people.", 'In 1066 "William" came to England.', "A new line starts."]


def test_pairs_compete_within_their_article_or_over_all_of_them():
    torch.manual_seed(0)
    pairs = teach_memory.Pairs([toy_article(4, 3, 0.1), toy_article(5, 3, 0.1)], "both")
    assert len(pairs) == 8 + 2 + 10 + 2  # questions without a gold segment are left out
    assert pairs.candidates("article").sum(1).tolist() == [4] * 10 + [5] * 12
    assert bool(pairs.candidates("pooled").all())
    assert pairs.gold[9].nonzero().flatten().tolist() == [1, 2]
    assert pairs.gold[-1].nonzero().flatten().tolist() == [4 + 1, 4 + 2]


def test_ties_count_against_the_gold_segment():
    pairs = teach_memory.Pairs([toy_article(4, 3, 0.1)], "questions")
    zeros = torch.zeros(2, 3)
    metrics = teach_memory.evaluate(zeros, zeros, pairs)  # every segment scores alike
    assert metrics["article"]["hit@1"] == 0.0


def test_training_improves_a_learnable_toy_recall_and_keeps_inactive_rows_zero():
    torch.manual_seed(0)
    train = teach_memory.Pairs([toy_article(10, 8, 0.5) for _ in range(5)], "both")
    val = teach_memory.Pairs([toy_article(10, 8, 0.5) for _ in range(2)], "both")
    wq, wk = torch.zeros(16, 8), torch.zeros(16, 8)
    wq[:8], wk[:8] = 0.1 * torch.randn(8, 8), 0.1 * torch.randn(8, 8)
    before = teach_memory.score(teach_memory.evaluate(wq, wk, val))
    for param, lr in (("full", 1e-2), ("diag", 1e-1)):
        run = teach_memory.train(wq, wk, train, val, "article", lr, 100, 32, 10, param)
        assert run["criterion"] > before
        assert float(run["wq"][8:].abs().sum()) == 0.0 and float(run["wk"][8:].abs().sum()) == 0.0


def test_the_position_baseline_ranks_each_articles_first_segment_first():
    torch.manual_seed(0)
    pairs = teach_memory.Pairs([toy_article(4, 3, 0.1), toy_article(5, 3, 0.1)], "questions")
    metrics = teach_memory.position_baseline(pairs)  # golds: [0], [1, 2] in each article
    assert metrics["article"]["hit@1"] == 0.5 and metrics["article"]["hit@3"] == 1.0
    assert metrics["pooled"]["hit@1"] == 0.25  # only the first article's segment 0 comes first overall
