"""The framework floor for the benchmark: a BentoML API that parses the same
request body as POST /predict and does nothing else."""

import bentoml

from heimdall.serving.schemas import Capture, ConfidenceLevel, Encoding
from heimdall.serving.settings import Settings


@bentoml.service(
    name="floor",
    workers=Settings().workers,
    traffic={"timeout": 30},
    metrics={"enabled": True, "namespace": "bentoml_service"},
    logging={"access": {"enabled": Settings().access_log}},  # as the service runs
)
class Floor:
    @bentoml.api(route="/predict")
    async def predict(
        self,
        captures: list[Capture],
        encoding: Encoding = "int16",
        confidence_level: ConfidenceLevel = 0.95,
        use_cache: bool = True,
    ) -> dict:
        return {"receivers": len(captures)}
