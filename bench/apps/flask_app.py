"""Baseline 2: the randomizer behind Flask, served by gunicorn sync workers.

    gunicorn -w 2 -k sync -b 127.0.0.1:PORT --chdir bench/apps flask_app:app

Same route and JSON shape as Berth's execute call:
    POST /datasphere/v1/nodes/<node_id>:execute
    {"folder_id": "...", "input": {"input_data": {"left_bound": 1, "right_bound": 10}}}
 -> {"output": {"output_data": {"generated_value": N}}}
No auth, no balancing beyond the kernel's accept queue, no health checks.
"""
from flask import Flask, jsonify, request

from randomizer_cell import run_cell

app = Flask(__name__)


@app.post("/datasphere/v1/nodes/<node_id>:execute")
def execute(node_id):
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        return jsonify(code="INVALID_ARGUMENT", message="body must be {folder_id, input}"), 400
    input_data = body["input"].get("input_data")
    if not isinstance(input_data, dict):
        return jsonify(code="INVALID_INPUT", message='input "input_data" must be an object'), 400
    return jsonify(output={"output_data": run_cell(input_data)})
