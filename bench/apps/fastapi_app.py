"""Baseline 3: the randomizer behind FastAPI, served by uvicorn with 2 worker processes.

    python3 -m uvicorn --workers 2 --host 127.0.0.1 --port PORT --app-dir bench/apps fastapi_app:app

Same route and JSON shape as Berth's execute call (see flask_app.py). The body is
validated by a pydantic model, the idiomatic FastAPI way; the endpoint is `async def`
(the cell does no I/O, so it runs on the event loop, not in the thread pool).
"""
from fastapi import FastAPI
from pydantic import BaseModel

from randomizer_cell import run_cell


class Inputs(BaseModel):
    input_data: dict


class ExecuteRequest(BaseModel):
    folder_id: str
    input: Inputs


app = FastAPI()


@app.post("/datasphere/v1/nodes/{node_id}:execute")
async def execute(node_id: str, body: ExecuteRequest):
    return {"output": {"output_data": run_cell(body.input.input_data)}}
