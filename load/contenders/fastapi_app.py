"""Plain FastAPI + uvicorn + onnxruntime: `uvicorn load.contenders.fastapi_app:app --workers 2`.

`/predict` does the service's work per request (no cache, no batching), as a sync endpoint
(FastAPI runs it in its thread pool); `/floor` parses the same body and does nothing."""

from __future__ import annotations

from fastapi import FastAPI

from heimdall.serving.schemas import PredictRequest
from load.contenders.work import Work

app = FastAPI()
work = Work()


@app.post("/predict")
def predict(request: PredictRequest) -> dict:
    body = request.model_dump()
    return work.answer(work.locate([work.decode(body)])[0], request.confidence_level)


@app.post("/floor")
async def floor(request: PredictRequest) -> dict:
    return {"receivers": len(request.captures)}
