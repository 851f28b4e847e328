"""PyTorch (eager) reference of the bimodal model's train step, for `python -m avemo.bench train`.

The same layers and shapes as `avemo.models.bimodal.BimodalModel` in fusion mode with a learned
gate (conv 3x3 -> ReLU -> 2x2 max-pool -> BN blocks; the face CNN on every s-th step, maps held
for s steps; audio dropout -> Dense -> ReLU -> LSTM; attention of Eq. 28-29 with the W_v
projection; gate of Eq. 30; output LSTM; dropout; linear head), RMSE (Eq. 37) + lambda * aux
(Eq. 31), Adam. The face CNN's FC head exists (same parameter count) but, as in avemo's fusion
model, is not on the path to the loss. With the spec's face-tower keys (those of
`configs/default.py` since issue 9) it is the default's model: a face LSTM over the spatial mean
of each map (through a dense layer + ReLU when `face_lstm_dense` > 0), the attention queried by
its state (`attention_query`), its projection added to c_t (`face_memory`), an LSTM over c_t
(`face_context_lstm`), a gate that also reads m and n (`gate_availability`), and per-modality
heads whose losses join the loss (`modality_heads`, `head_weight`; the face head's on steps with a
face). Without those keys (or with them off) it is the model before the tower. With
`gate_per_output` (the default's since issue 9) each emotion dimension has its own gate, Eq. (30),
output LSTM and head, and Eq. (31) constrains the gates' mean.

It depends on torch and numpy only -- torch is NOT a dependency of avemo -- and runs as a script
with any Python that has torch (the benchmark starts it in a subprocess):

    python avemo/bench/torch_reference.py --spec '{"batch": 8, "window": 150, ...}'

It prints one JSON line: {"step_s": [...], "params": N, "threads": T}.
`--device cuda --bf16` runs it on a GPU the way a PyTorch user would make it fast there:
channels-last convolutions under bf16 autocast (loss in f32), timed between synchronisations.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn


class TorchBimodal(nn.Module):
    def __init__(self, s: dict):
        super().__init__()
        ch = s["channels"]
        layers = []
        for f, stride in zip(s["conv_features"], s["conv_strides"], strict=True):
            layers += [
                nn.Conv2d(ch, f, 3, stride=stride, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(f, momentum=0.1, eps=1e-5),
            ]
            ch = f
        self.cnn = nn.Sequential(*layers)
        size = s["crop"]
        for stride in s["conv_strides"]:
            size = -(-size // stride) // 2
        self.positions = size * size
        fc, prev = [], size * size * ch
        for f in s["fc_features"]:
            fc.append(nn.Linear(prev, f))
            prev = f
        self.fc = nn.ModuleList(fc)  # stage-1 head: parameters only, not on the fusion path
        self.fc_out = nn.Linear(prev, 2)
        d, h = s["audio_dense"], s["lstm"]
        self.audio_dropout = nn.Dropout(s["audio_input_dropout"])
        self.audio_dense = nn.Linear(s["feature_dim"], d)
        self.audio_lstm = nn.LSTM(d, h, batch_first=True)
        # The face tower (issue 9; absent keys: the model before it).
        v = s.get("video_lstm", 0)
        dense = s.get("face_lstm_dense", 0)
        self.face_dense = nn.Linear(ch, dense) if v and dense else None
        self.face_lstm = nn.LSTM(dense or ch, v, batch_first=True) if v else None
        self.face_memory = nn.Linear(v, h) if v else None
        self.query = s.get("attention_query", "audio")
        query_dim = {"audio": h, "face": v, "audio+face": h + v}[self.query]
        self.face_context = nn.LSTM(h, h, batch_first=True) if s.get("face_context_lstm") else None
        self.availability = bool(s.get("gate_availability"))
        self.heads = bool(s.get("modality_heads"))
        self.audio_head = nn.Linear(h, 2) if self.heads else None
        self.video_head = nn.Linear(h, 2) if self.heads else None
        a = s["attention"]
        self.W = nn.Linear(ch, a)
        self.W_g = nn.Linear(query_dim, a, bias=False)
        self.w_h = nn.Linear(a, 1, bias=False)
        self.W_v = nn.Linear(ch, h)
        # One gate per emotion dimension (`gate_per_output`, the default's since issue 9): each
        # dimension fused by its own Eq. (30) and read by its own output LSTM and head.
        self.per_output = bool(s.get("gate_per_output"))
        gates = 2 if self.per_output else 1
        self.gate = nn.Linear(2 * h + (2 if self.availability else 0), gates)
        self.head_dropout = nn.Dropout(s["head_dropout"])
        if self.per_output:
            self.out_lstms = nn.ModuleList(
                nn.LSTM(h, s["output_lstm"], batch_first=True) for _ in range(gates)
            )
            self.heads_out = nn.ModuleList(nn.Linear(s["output_lstm"], 1) for _ in range(gates))
        else:
            self.out_lstm = nn.LSTM(h, s["output_lstm"], batch_first=True)
            self.head = nn.Linear(s["output_lstm"], 2)
        self.stride = s["frame_stride"]

    def forward(self, faces: torch.Tensor, audio: torch.Tensor, availability: torch.Tensor):
        b, length = audio.shape[:2]
        f = faces[:, :: self.stride]
        lf = f.shape[1]
        x = f.reshape((b * lf,) + f.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
        fmap = self.cnn(x)  # [N, C, h, w]
        fmap = fmap.flatten(2).transpose(1, 2).reshape(b, lf, self.positions, -1)
        if self.stride > 1:
            fmap = fmap.repeat_interleave(self.stride, dim=1)[:, :length]
        h, _ = self.audio_lstm(torch.relu(self.audio_dense(self.audio_dropout(audio))))
        face_state = None
        if self.face_lstm is not None:  # the face stream over each step's mean face features
            pooled = fmap.mean(dim=2)
            if self.face_dense is not None:
                pooled = torch.relu(self.face_dense(pooled))
            face_state, _ = self.face_lstm(pooled)
        if self.query == "audio":
            query = h
        elif self.query == "face":
            query = face_state
        else:  # "audio+face"
            query = torch.cat([h, face_state], dim=-1)
        scores = self.w_h(torch.tanh(self.W(fmap) + self.W_g(query)[:, :, None])).squeeze(-1)
        weights = torch.softmax(scores, dim=-1)
        context = torch.einsum("blk,blkd->bld", weights, self.W_v(fmap))
        if face_state is not None:
            context = context + self.face_memory(face_state)
        if self.face_context is not None:
            context, _ = self.face_context(context)
        gate_in = [h, context] + ([availability] if self.availability else [])
        betas = torch.sigmoid(self.gate(torch.cat(gate_in, dim=-1)))  # [B, L, gates]
        if self.per_output:
            columns = []
            for d, (lstm, head) in enumerate(zip(self.out_lstms, self.heads_out, strict=True)):
                b_d = betas[..., d : d + 1]
                fused, _ = lstm(b_d * h + (1 - b_d) * context)
                columns.append(head(self.head_dropout(fused)))
            # Eq. (31) on the gates' mean, as avemo's model has it
            outputs = {"outputs": torch.cat(columns, dim=-1), "beta": betas.mean(dim=-1)}
        else:
            fused, _ = self.out_lstm(betas * h + (1 - betas) * context)
            outputs = {"outputs": self.head(self.head_dropout(fused)), "beta": betas.squeeze(-1)}
        if self.heads:
            outputs["audio_outputs"] = self.audio_head(h)
            outputs["video_outputs"] = self.video_head(context)
        return outputs


def rmse(outputs, labels, mask) -> torch.Tensor:
    n = mask.sum().clamp(min=1.0)
    per_dim = ((outputs - labels) ** 2 * mask[..., None]).sum(dim=(0, 1)) / n
    return torch.sqrt(per_dim + 1e-12).mean()


def loss_fn(out: dict, batch, aux_weight: float, head_weight: float = 0.0) -> torch.Tensor:
    mask, beta = batch["mask"], out["beta"].float()
    n = mask.sum().clamp(min=1.0)
    main = rmse(out["outputs"].float(), batch["labels"], mask)
    m, p = batch["speech_energy"], batch["face_present"]
    aux = (0.5 * ((m - beta) ** 2 + (p - (1 - beta)) ** 2) * mask).sum() / n
    loss = main + aux_weight * aux
    if "audio_outputs" in out:  # the per-modality heads; the face head's on steps with a face
        heads = rmse(out["audio_outputs"].float(), batch["labels"], mask) + rmse(
            out["video_outputs"].float(), batch["labels"], mask * p
        )
        loss = loss + head_weight * heads
    return loss


def run(spec: dict, steps: int, rounds: int, device: str = "cpu", bf16: bool = False) -> dict:
    torch.manual_seed(0)
    model = TorchBimodal(spec).to(device)
    if device != "cpu":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b, length = spec["batch"], spec["window"]
    rng = np.random.default_rng(0)
    size, ch = spec["crop"], spec["channels"]
    batch = {
        "faces": torch.from_numpy(rng.integers(0, 255, (b, length, size, size, ch), np.uint8)),
        "audio": torch.from_numpy(
            rng.standard_normal((b, length, spec["feature_dim"]), np.float32)
        ),
        "labels": torch.zeros(b, length, 2),
        "mask": torch.ones(b, length),
        "speech_energy": torch.ones(b, length),
        "face_present": torch.ones(b, length),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        availability = torch.stack([batch["speech_energy"], batch["face_present"]], dim=-1)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch["faces"], batch["audio"], availability)
        loss = loss_fn(out, batch, spec["aux_weight"], spec.get("head_weight", 0.0))
        loss.backward()
        opt.step()
        return loss

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    step()
    step()
    sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - start) / steps)
    return {
        "step_s": times,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True, help="JSON of sizes (see avemo.bench.train)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (accelerators)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device != "cpu":
        torch.backends.cudnn.benchmark = True  # the fastest convolution algorithm per shape
    result = run(json.loads(args.spec), args.steps, args.rounds, args.device, args.bf16)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
