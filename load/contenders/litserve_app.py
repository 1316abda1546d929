"""The same work in LitServe with its batching: `python -m load.contenders.litserve_app PORT [floor]`.

decode_request decodes a capture set, predict runs a batch's features and one ONNX run,
encode_response postprocesses; two worker processes, as the service runs two workers.
With `floor` the API parses the body and does nothing (the framework's floor)."""

from __future__ import annotations

import sys

import litserve as ls

from load.contenders.work import Work


class Localize(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.work = Work()

    def decode_request(self, request: dict) -> dict:
        return self.work.decode(request)

    def predict(self, sets: list[dict]) -> list:
        return list(self.work.locate(sets))

    def encode_response(self, row) -> dict:
        return self.work.answer(row)


class Floor(ls.LitAPI):
    def setup(self, device: str) -> None:
        pass

    def decode_request(self, request: dict) -> int:
        return len(request["captures"])

    def predict(self, n: int) -> int:
        return n

    def encode_response(self, n: int) -> dict:
        return {"receivers": n}


if __name__ == "__main__":
    port, floor = int(sys.argv[1]), sys.argv[2:] == ["floor"]
    api = Floor() if floor else Localize(max_batch_size=64, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=2)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
