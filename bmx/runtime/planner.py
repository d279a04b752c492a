"""Per input shape: shapes checked node by node, Concat inputs placed into their output, an arena of reused buffers."""
import math

import numpy as np

from .graph import F32, ShapeError
from .ops.shapes import _Concat


class Plan:
    """The steps for one input shape and the buffers they write into.

    ``steps``: (run, argument slots, output slot, output location, slots to drop afterwards); an
    output location is (buffer id, shape, index chain): the buffer seen with that shape (a Concat's
    full output), then indexed (to the slice of one of its inputs); or None (the step allocates).
    ``buffers``: float32 sizes of the arena, created by bind() and kept between calls, so that a
    call allocates (almost) nothing.
    """

    def __init__(self, steps, buffers, template):
        self.steps, self.buffers, self.template = steps, buffers, template
        self.bound = None

    def bind(self):
        """The steps with their output arrays, creating the arena if it is not there."""
        if self.bound is None:
            arena = [np.empty(size, F32) for size in self.buffers]
            bound = []
            for run, args, out, location, frees in self.steps:
                view = None
                if location is not None:
                    buffer, shape, chain = location
                    view = arena[buffer][:math.prod(shape)].reshape(shape)
                    for index in chain:
                        view = view[index]
                bound.append((run, args, out, view, frees))
            self.bound = bound
        return self.bound


MAX_PLANS = 8  # input shapes whose plans are kept (only the last one used keeps its arena)


class Planner:
    """Model's per-shape half (a mixin: Model keeps the state)."""

    def _plan(self, shape):
        try:
            shapes = self._infer(shape)
        except ShapeError as err:
            raise ValueError(f"{self._name}: an input of shape {shape} does not fit the model: {err}") from None
        entries = self._entries
        placement, claimed = self._placement(shapes)
        # where each value lives: its own arena buffer, a slice of a Concat's buffer (placement),
        # the buffer of the value it is a view of, or (None) an array the step allocates itself
        base = {}
        for entry in entries:
            if entry.out in placement:
                base[entry.out] = placement[entry.out][0]
            elif entry.op.view:
                base[entry.out] = base.get(entry.args[0])
            else:
                base[entry.out] = entry.out
        first, last, reads = {}, {}, []
        for i, entry in enumerate(entries):
            read = set(entry.args)
            if entry.out in placement:
                read.add(placement[entry.out][0])  # writing into the Concat's buffer keeps it alive
            reads.append(read)
            for slot in read | {entry.out}:
                if base.get(slot) is not None:
                    first.setdefault(base[slot], i)
                    last[base[slot]] = i
        for head in self._heads:
            if base.get(head) is not None:
                last[base[head]] = len(entries)
        buffer_of, sizes = assign_buffers(len(entries), shapes, first, last)
        # drop every value after its last reader: arrays the steps allocate are freed during the call
        last_read = {}
        for i, read in enumerate(reads):
            for slot in read:
                last_read[slot] = i
        for head in self._heads:
            last_read[head] = len(entries)
        frees = [[] for _ in entries]
        for slot, i in last_read.items():
            if slot >= 0 and i < len(entries):
                frees[i].append(slot)
        steps = []
        for i, entry in enumerate(entries):
            run, args = entry.op.run, entry.args
            if entry.out in claimed:
                run, args = concat_rest(entry, shapes, claimed[entry.out])
            location = None
            if entry.out in placement:
                root, chain = placement[entry.out]
                location = (buffer_of[root], shapes[root], chain)
            elif base.get(entry.out) == entry.out:
                location = (buffer_of[entry.out], shapes[entry.out], ())
            steps.append((run, tuple(args), entry.out, location, tuple(frees[i])))
        template = [None] * (self._values + len(self._consts))
        for slot, array in self._consts.items():
            template[slot] = array
        if len(self._plans) >= MAX_PLANS:
            self._plans.pop(next(iter(self._plans)))
        plan = self._plans[shape] = Plan(steps, sizes, template)
        return plan

    def _placement(self, shapes):
        """Which values are written straight into a slice of the Concat that consumes them.

        Returns (placement, claimed): placement maps a slot to (root Concat slot, chain of index
        tuples into the root's buffer); claimed maps a Concat's slot to the argument positions it
        receives in place. A value qualifies if its step computes it into a given array (not a
        view, not the input, not a constant, not a model output) and no other Concat took it.
        Concats nest, so a DenseNet stage ends up in one buffer.
        """
        producers = {e.out: e for e in self._entries}
        heads = set(self._heads)
        placement, claimed = {}, {}
        for entry in reversed(self._entries):
            if not isinstance(entry.op, _Concat):
                continue
            root, chain = placement.get(entry.out, (entry.out, ()))
            axis = entry.op.dim % len(shapes[entry.out])
            offset = 0
            for position, a in enumerate(entry.args):
                size = shapes[a][axis]
                source = producers.get(a)
                if source is not None and a not in placement and a not in heads and entry.args.count(a) == 1 \
                        and not source.op.view:
                    placement[a] = (root, chain + ((slice(None),) * axis + (slice(offset, offset + size),),))
                    claimed.setdefault(entry.out, set()).add(position)
                offset += size
        return placement, claimed

    # -------------------------------------------------------------- per call


def assign_buffers(count, shapes, first, last):
    """Gives every value that owns memory an arena buffer, reusing those of dead values.

    A buffer is taken at the first step that writes into it and returned after the last step
    that reads it (or any view of it); best fit, else the largest free one grows. Returns
    (slot -> buffer id, buffer sizes in float32 elements).
    """
    starts, ends = {}, {}
    for slot, i in first.items():
        starts.setdefault(i, []).append(slot)
        ends.setdefault(last[slot], []).append(slot)
    sizes, free, buffer_of = [], [], {}
    for i in range(count):
        for slot in starts.get(i, ()):
            need = math.prod(shapes[slot])
            fits = [b for b in free if sizes[b] >= need]
            if fits:
                chosen = min(fits, key=lambda b: sizes[b])
            elif free:
                chosen = max(free, key=lambda b: sizes[b])
                sizes[chosen] = need
            else:
                chosen = len(sizes)
                sizes.append(need)
            if chosen in free:
                free.remove(chosen)
            buffer_of[slot] = chosen
        for slot in ends.get(i, ()):
            free.append(buffer_of[slot])
    return buffer_of, sizes


def concat_rest(entry, shapes, in_place):
    """A Concat step whose inputs at positions ``in_place`` are already in its buffer: copies the rest."""
    axis = entry.op.dim % len(shapes[entry.out])
    offset, args, indices = 0, [], []
    for position, a in enumerate(entry.args):
        size = shapes[a][axis]
        if position not in in_place:
            args.append(a)
            indices.append((slice(None),) * axis + (slice(offset, offset + size),))
        offset += size

    def run(*xs, out):
        for x, index in zip(xs, indices):
            out[index] = x
        return out

    return run, args
