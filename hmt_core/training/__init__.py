"""The training side of hmt_core: corpora, training examples, the training CLI, LoRA adapters and the recall fit.

- corpora.py: fetch the offline corpora into data/ (`python -m hmt_core.training.corpora --out data/`);
- data.py: training examples, language-modelling windows and document QA from SQuAD articles;
- train.py: the training CLI (`python -m hmt_core.training.train`), multi-stage BPTT;
- lora.py: LoRA adapters on the backbone (checkpoints carry and merge them);
- fit_recall.py: fits the token keys' whitening and the recall channels' fusion
  (`python -m hmt_core.training.fit_recall`).

Nothing here is imported by `import hmt_core`; checkpoint loading imports lora.py alone.
"""
