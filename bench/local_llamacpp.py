"""llama.cpp's side of agentd-local-bench: the same GGUF, the same prompt
token ids, greedy decoding of a fixed number of tokens, through
llama-cpp-python. Prints one JSON object with the best round's figures.

usage: local_llamacpp.py GGUF PROMPT_IDS_JSON DECODE_TOKENS ROUNDS
"""

import json
import os
import sys
import time

import numpy as np
from llama_cpp import Llama


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    gguf, prompt, decode, rounds = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    threads = os.cpu_count() or 1
    llm = Llama(model_path=gguf, n_ctx=len(prompt) + decode + 8, n_threads=threads,
                n_threads_batch=threads, n_batch=512, verbose=False)
    best = None
    for _ in range(max(rounds, 1)):
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        prompt_secs = time.perf_counter() - started
        decode_started = time.perf_counter()
        for _ in range(decode - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode_secs = time.perf_counter() - decode_started
        figures = {
            "ttft_ms": prompt_secs * 1e3,
            "prompt_tps": len(prompt) / prompt_secs,
            "decode_tps": (decode - 1) / decode_secs,
            "rss_mib": rss_mib(),
        }
        cost = figures["ttft_ms"] + 1e3 / figures["decode_tps"]
        if best is None or cost < best[0]:
            best = (cost, figures)
    print(json.dumps(best[1]))


if __name__ == "__main__":
    main()
