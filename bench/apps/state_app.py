"""Baseline for bench/scale-to-zero.ts: the same state and cell as the Berth node, behind Flask,
started cold with `gunicorn --preload` (the state is loaded once in the master, then forked).

    BERTH_BENCH_STATE=state.pkl python3 -m gunicorn --preload -w 1 -b 127.0.0.1:PORT --chdir bench/apps state_app:app

POST /datasphere/v1/nodes/<node_id>:execute {"folder_id": "...", "input": {"x": 1.5}}
 -> {"output": {"result": state[0] + x}}
"""
import os
import pickle

from flask import Flask, jsonify, request

with open(os.environ["BERTH_BENCH_STATE"], "rb") as f:
    state = pickle.load(f)

app = Flask(__name__)


@app.post("/datasphere/v1/nodes/<node_id>:execute")
def execute(node_id):
    body = request.get_json(silent=True) or {}
    x = (body.get("input") or {}).get("x", 0)
    return jsonify(output={"result": float(state[0]) + x})
