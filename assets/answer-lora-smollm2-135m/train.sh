#!/bin/sh
# The command that trained this answer adapter (2-core AMD EPYC CPU, fp32); its log is train_log.jsonl.
python -m hmt_core.training.train_answer --out assets/answer-lora-smollm2-135m
# How the app answers with it (answering.json): one passage in the prompt, chosen on the development articles with
#   python -m bench.qa --hmt-weights assets/hmt-smollm2-135m --answer-adapter assets/answer-lora-smollm2-135m \
#       --articles dev --questions-per-article 100 --methods reread_adapter reread_adapter_1
# (a tie: token F1 0.241 with one passage, 0.232 with three), and its not-found threshold fitted on the same articles:
python -m hmt_core.training.fit_not_found --hmt-weights assets/hmt-smollm2-135m \
    --answer-adapter assets/answer-lora-smollm2-135m --passages 1
