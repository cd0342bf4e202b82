"""Anchor for bench/fork.ts: the same numpy state as the benchmark's checkpoint, served by
Flask under gunicorn with --preload, so the state is built once in the arbiter and the workers
share it copy-on-write (gunicorn's answer to "N workers, one copy of the model").

    BENCH_STATE_BYTES=1073741824 gunicorn --preload -w 4 -k sync -b 127.0.0.1:PORT --chdir bench/apps numpy_state_app:app

POST /call {"x": 1} -> {"out": data[0] + counter}, where counter is per-worker state like a
cell's namespace.
"""
import os

import numpy as np
from flask import Flask, jsonify, request

data = np.ones(int(os.environ.get("BENCH_STATE_BYTES", str(10 * 1024 * 1024))) // 8)
counter = 0

app = Flask(__name__)


@app.post("/call")
def call():
    global counter
    counter += int((request.get_json(silent=True) or {}).get("x", 0))
    return jsonify(out=float(data[0]) + counter, pid=os.getpid())
