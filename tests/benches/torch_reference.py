"""PyTorch reference for the training-throughput benchmark (tests/benches/train_step.rs).

Builds the same network as podscore's trainer (features::default_definitions, E=16,
encoder 256-128 with the first layer split by scope, batch norm, five 64-wide towers),
trains it on one random batch of 1024 rows with Adam, and prints rows per second.

    python tests/benches/torch_reference.py --threads 2 [--fused | --sparse]

`--sparse` uses sparse embedding gradients with SparseAdam (only the rows a batch touched
are updated, as podscore's trainer does) and Adam for the dense parameters.
"""

import argparse
import time

import torch
from torch import nn

BATCH = 1024
EMBEDDING = 16
VOCAB = {"show": 10_000, "episode": 50_000, "campaign": 2_000, "creative": 2_000, "topic": 200}
# (name, scope, kind, vocab or width, bag length)
FEATURES = [
    ("user_country", "request", "id", "country", 1),
    ("user_platform", "request", "id", "platform", 1),
    ("user_age_bucket", "request", "id", "age_bucket", 1),
    ("user_history", "request", "bag", "show", 20),
    ("user_follows", "request", "bag", "show", 10),
    ("user_search_topics", "request", "bag", "topic", 8),
    ("context_surface", "request", "id", "surface", 1),
    ("context_hour", "request", "id", "hour", 1),
    ("context_weekday", "request", "id", "weekday", 1),
    ("context_session_length", "request", "numeric", 1, 1),
    ("candidate_kind", "candidate", "id", "kind", 1),
    ("show_id", "candidate", "id", "show", 1),
    ("show_genres", "candidate", "bag", "genre", 3),
    ("show_topics", "candidate", "bag", "topic", 5),
    ("show_embedding", "candidate", "dense", 16, 1),
    ("show_streams_30d", "candidate", "numeric", 1, 1),
    ("episode_id", "candidate", "id", "episode", 1),
    ("episode_topics", "candidate", "bag", "topic", 5),
    ("episode_duration", "candidate", "numeric", 1, 1),
    ("campaign_id", "candidate", "id", "campaign", 1),
    ("creative_id", "candidate", "id", "creative", 1),
    ("creative_format", "candidate", "id", "format", 1),
    ("creative_slot", "candidate", "id", "slot", 1),
    ("creative_layout", "candidate", "id", "layout", 1),
]
HEADS = ["promo_stream", "ad_stream", "click", "like", "follow"]


def vocab_size(name):
    return VOCAB.get(name, 24)


class Network(nn.Module):
    def __init__(self, sparse=False):
        super().__init__()
        self.tables = nn.ModuleDict()
        widths = {"request": 0, "candidate": 0}
        for name, scope, kind, vocab, _ in FEATURES:
            if kind in ("id", "bag"):
                self.tables[name] = nn.Embedding(vocab_size(vocab), EMBEDDING, sparse=sparse)
                widths[scope] += EMBEDDING
            else:
                widths[scope] += vocab
        self.request = nn.Linear(widths["request"], 256)
        self.candidate = nn.Linear(widths["candidate"], 256, bias=False)
        self.second = nn.Linear(256, 128)
        self.norm = nn.BatchNorm1d(128)
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1)) for _ in HEADS
        )

    def scope(self, scope, batch):
        parts = []
        for name, feature_scope, kind, _, _ in FEATURES:
            if feature_scope != scope:
                continue
            value = batch[name]
            if kind == "id":
                parts.append(self.tables[name](value))
            elif kind == "bag":
                ids, mask = value
                summed = (self.tables[name](ids) * mask.unsqueeze(2)).sum(1)
                parts.append(summed / mask.sum(1, keepdim=True).clamp(min=1.0))
            else:
                parts.append(value)
        return torch.cat(parts, 1)

    def forward(self, batch):
        hidden = torch.relu(self.request(self.scope("request", batch)) + self.candidate(self.scope("candidate", batch)))
        hidden = self.norm(torch.relu(self.second(hidden)))
        return torch.cat([tower(hidden) for tower in self.towers], 1)


def random_batch():
    batch = {}
    for name, _, kind, vocab, length in FEATURES:
        if kind == "id":
            batch[name] = torch.randint(0, vocab_size(vocab), (BATCH,))
        elif kind == "bag":
            filled = torch.randint(0, length + 1, (BATCH, 1))
            mask = (torch.arange(length).unsqueeze(0) < filled).float()
            batch[name] = (torch.randint(0, vocab_size(vocab), (BATCH, length)), mask)
        else:
            batch[name] = torch.randn(BATCH, vocab)
    return batch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fused", action="store_true")
    parser.add_argument("--sparse", action="store_true")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = Network(sparse=args.sparse)
    parameters = sum(p.numel() for p in network.parameters())
    if args.sparse:
        tables = list(network.tables.parameters())
        table_ids = {id(p) for p in tables}
        dense = [p for p in network.parameters() if id(p) not in table_ids]
        optimizers = [torch.optim.SparseAdam(tables, lr=1e-3), torch.optim.Adam(dense, lr=1e-3)]
    else:
        optimizers = [torch.optim.Adam(network.parameters(), lr=1e-3, fused=args.fused or None)]
    batch = random_batch()
    labels = (torch.rand(BATCH, len(HEADS)) < 0.05).float()
    loss_fn = nn.BCEWithLogitsLoss()

    def step():
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(batch), labels)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    for _ in range(10):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - started
    print(
        f"torch {torch.__version__} threads={args.threads} fused={args.fused} sparse={args.sparse} parameters={parameters} "
        f"step_ms={seconds / args.steps * 1e3:.2f} rows_per_s={BATCH * args.steps / seconds:.0f}"
    )


if __name__ == "__main__":
    main()
