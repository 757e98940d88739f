"""Turning batch numbers into everything DALI and the label code need, deterministically.

A prepared batch holds its pair plans, the JPEG bytes of their crops, (SiamMask) the decoded
search masks and the host-side label inputs; a prepared run (one DALI run: consecutive batches) adds the graph's external_source
values.  A batch is a pure function of (seed, epoch, batch, rank, world size, batch size) and of
which crops are unusable: for every index the first attempt (0, 1, ...) whose two crops are
usable wins (`pipeline.sampling` plans attempt > 0 as a replacement pair; a pair whose search
mask is a label also needs that mask usable), so the result does not depend on when, in which
thread or in what order the crops were read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.crop_source import NO_MASK, describe_damage, mask_ref
from pipeline.sampling import PlanBatch
from pipeline.targets import random_keys

log = logging.getLogger("pipeline.loader")

MAX_ATTEMPTS = 100  # replacement pairs tried for one index before giving up


class UnusableCropsError(RuntimeError):
    """No usable pair for an index in MAX_ATTEMPTS tries: the shards are (almost) all damaged."""


@dataclass
class PreparedBatch:
    """One batch ready for DALI and the labels."""
    batch: int
    plans: PlanBatch
    template_jpegs: list
    search_jpegs: list
    replaced: int            # pairs replaced because a crop (or a search mask) was unusable
    label_inputs: tuple      # host tensors (boxes, neg, keys, search_mask or None): LabelInputs
    search_masks: list | None = None   # mask graphs: the decoded search mask of each pair

    def refs(self) -> set:
        """The crops (and search masks) this batch uses."""
        return set(unique_refs(self.plans))


@dataclass
class PreparedRun:
    """Consecutive prepared batches rendered by one DALI run, with the graph's input values."""
    batches: list
    values: dict


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """Seed of the label-subsampling keys of one batch."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(batch), int(rank), 0x4C42])
    return int(state.generate_state(1, np.uint64)[0] >> 1)


class LabelInputs:
    """Host tensors (boxes, neg, keys, search_mask) for the labels of a batch: the search boxes,
    the negative flags, the subsampling keys drawn from `batch_seed` and (`masks`: SiamMask)
    which pairs' search masks are labels (else None).  `pinned` (for a GPU): page-locked, so
    the consumer's copies to the device are asynchronous."""

    def __init__(self, seed: int, rank: int, anchors: int, pinned: bool, masks: bool = False):
        self.seed, self.rank, self.anchors, self.pinned = int(seed), int(rank), int(anchors), pinned
        self.masks = bool(masks)

    def __call__(self, epoch: int, batch: int, plans: PlanBatch) -> tuple:
        n = len(plans)
        boxes = torch.empty((n, 4), dtype=torch.float32, pin_memory=self.pinned)
        neg = torch.empty((n,), dtype=torch.bool, pin_memory=self.pinned)
        keys = torch.empty((n, self.anchors), dtype=torch.float64, pin_memory=self.pinned)
        boxes.numpy()[:] = plans.search.box
        neg.numpy()[:] = plans.neg
        random_keys(batch_seed(self.seed, epoch, batch, self.rank), n, self.anchors,
                    out=keys.numpy())
        search_mask = None
        if self.masks:
            search_mask = torch.empty((n,), dtype=torch.bool, pin_memory=self.pinned)
            search_mask.numpy()[:] = plans.search_mask
        return boxes, neg, keys, search_mask


def unique_refs(plans: PlanBatch) -> list:
    """The distinct crops of a batch of plans, then the search masks it needs (`mask_ref`), in
    first-use order."""
    rows = np.concatenate([plans.template_ref, plans.search_ref]).tolist()
    refs = list(dict.fromkeys(map(tuple, rows)))
    if plans.search_mask.any():
        refs += dict.fromkeys(mask_ref(d, e) for d, e in plans.search_ref[plans.search_mask].tolist())
    return refs


def _pair_refs(plans: PlanBatch) -> list:
    """(template ref, search ref, search mask wanted) of every pair."""
    return list(zip(map(tuple, plans.template_ref.tolist()), map(tuple, plans.search_ref.tolist()),
                    plans.search_mask.tolist()))


class BatchPreparer:
    """The logic of batch preparation (no threads; `pipeline.read_ahead` runs it ahead).

    sampler: PairSampler; source: CropSource; indices: this rank's global indices of an epoch;
    inputs: the graph's GraphInputs; labels(epoch, batch, plans) -> host label inputs.
    With a mask graph (`inputs.masks`) every batch carries its search masks (`NO_MASK` for
    pairs whose search mask is not a label).
    """

    def __init__(self, sampler, source, indices, batch_size: int, inputs, labels):
        self.sampler, self.source, self.indices = sampler, source, indices
        self.batch_size, self.inputs, self.labels = int(batch_size), inputs, labels

    def first_plans(self, epoch: int, batch: int) -> PlanBatch:
        """Attempt-0 plans of a batch (what its crops are, before any is known unusable)."""
        rows = self.indices[batch * self.batch_size:(batch + 1) * self.batch_size]
        return self.sampler.plan_batch(epoch, rows)

    def first_plans_of(self, epoch: int, first: int, count: int) -> list:
        """`first_plans` of batches [first, first + count), drawn in one call: rows do not
        depend on each other, so the numbers are the same and the call's fixed cost is shared."""
        if count == 1:
            return [self.first_plans(epoch, first)]
        b = self.batch_size
        plans = self.sampler.plan_batch(epoch, self.indices[first * b:(first + count) * b])
        return [plans.take(slice(k * b, (k + 1) * b)) for k in range(count)]

    def finish(self, epoch: int, batch: int, plans: PlanBatch, fetched: dict) -> PreparedBatch:
        """The batch from its attempt-0 plans and their crops' bytes (`fetched`: ref -> bytes or
        None for an unusable crop; refs missing from it are read now).  Pairs with an unusable
        crop are replaced by the next attempts, read here."""
        def crop(ref):
            if ref in fetched:
                return fetched[ref]
            return self.source.read(ref)

        rows = self.indices[batch * self.batch_size:(batch + 1) * self.batch_size]
        order = np.arange(len(rows))
        parts, zs, xs, ms, replaced = [plans], [], [], [], 0
        for i, pair in enumerate(_pair_refs(plans)):
            z, x, m = self._pair(crop, *pair)
            attempt, plan = 0, plans
            while z is None or x is None or m is None:
                replaced += 1
                log.debug("epoch %d index %d attempt %d: replacing the pair (template %s, "
                          "search %s)", epoch, rows[i], attempt, pair[0], pair[1])
                attempt += 1
                if attempt == MAX_ATTEMPTS:
                    raise UnusableCropsError(
                        f"no usable crops: epoch {epoch} index {rows[i]} found none in {MAX_ATTEMPTS} pairs "
                        f"in a row; damaged shards: {describe_damage(self.source.damaged_shards())}")
                plan = self.sampler.plan_batch(epoch, rows[i:i + 1], attempt)
                pair = _pair_refs(plan)[0]
                z, x, m = self._pair(crop, *pair)
            if plan is not plans:
                order[i] = sum(len(p) for p in parts)
                parts.append(plan)
            zs.append(z)
            xs.append(x)
            ms.append(m)
        if len(parts) > 1:
            plans = PlanBatch.concat(parts).take(order)
        return PreparedBatch(batch, plans, zs, xs, replaced, self.labels(epoch, batch, plans),
                             ms if self.inputs.masks else None)

    @staticmethod
    def _pair(crop, t_ref, s_ref, wants_mask) -> tuple:
        """(template bytes, search bytes, search mask), each None if unusable (the mask is
        `NO_MASK` when the pair's search mask is not a label)."""
        z = crop(t_ref)
        if z is None:
            return None, None, None
        # one-frame objects: the template and the search image are the same crop
        x = z if s_ref == t_ref else crop(s_ref)
        if x is None or not wants_mask:
            return z, x, NO_MASK
        return z, x, crop(mask_ref(*s_ref))

    def prepare(self, epoch: int, batch: int) -> PreparedBatch:
        """The batch, reading every crop in this thread."""
        return self.finish(epoch, batch, self.first_plans(epoch, batch), {})

    def run(self, batches: list) -> PreparedRun:
        """Prepared batches -> one DALI run with its external_source values."""
        plans = PlanBatch.concat([b.plans for b in batches]) if len(batches) > 1 else batches[0].plans
        masks = [m for b in batches for m in b.search_masks] if self.inputs.masks else None
        values = self.inputs.values(plans, [j for b in batches for j in b.template_jpegs],
                                    [j for b in batches for j in b.search_jpegs], masks)
        return PreparedRun(list(batches), values)

    def refresh(self, epoch: int, run: PreparedRun) -> PreparedRun:
        """`run` again if none of its crops has been found unusable since it was prepared,
        else the run with those batches prepared anew (the same as preparing them now)."""
        bad = self.source.bad   # grows in other threads: membership tests only
        if not bad:
            return run
        stale = [i for i, b in enumerate(run.batches) if any(r in bad for r in b.refs())]
        if not stale:
            return run
        batches = list(run.batches)
        for i in stale:
            batches[i] = self.prepare(epoch, batches[i].batch)
        return self.run(batches)
