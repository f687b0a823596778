#!/bin/sh
# The command that trained this answer adapter (2-core AMD EPYC CPU, fp32); its log is train_log.jsonl.
python -m hmt_core.training.train_answer --out assets/answer-lora-smollm2-135m
