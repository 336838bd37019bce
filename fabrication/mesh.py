"""Watertight solids from height fields, written with NumPy; binary STL in and out.

A :class:`HeightField` is a rectilinear grid of cells (node coordinates ``x_mm``,
``y_mm``) with an integer level per cell (the height in printer layers of ``z_step_mm``;
0 = no material). :func:`height_field_mesh` turns it into one closed, consistently wound
(outward normals) triangle mesh with shared vertices:

* each cell with material has a flat top (2 triangles) at its level;
* between neighbouring cells of different levels (the outside counts as level 0) a
  vertical wall runs from the lower to the higher level. Every vertex that lies on the
  wall's vertical edges (the levels of the other cells around that grid node) is part of
  the wall, so there are no T-junctions: each wall side is fanned from the opposite
  bottom (or top) corner, ``p + q`` triangles for ``p``/``q`` segments on its sides;
* the bottom is flat at z = 0: two triangles per cell, except for one rectangle of cells
  (the active area of a layer) whose bottom is a single fan from its centre.

**Saddles.** Where the four cells around a grid node alternate high/low/high/low, the
two high cells touch along a vertical segment of that node only - an edge shared by four
faces (not manifold). The two walls of one of the high cells then bend through an extra
vertex placed ``saddle_offset_mm`` (default 1 um) into that cell at mid-height, which
separates the two solids by a sliver far below any printer's resolution (volume change
~1e-4 mm^3 per saddle) and makes every edge shared by exactly two faces.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from diffractive._read import InputFileError, check_regular_file, finite_array, read_text

from .materials import FabricationError

#: Largest STL file read: 4 GiB binary (80 million triangles), 1 GiB ASCII (a fallback for hand-edited files).
MAX_STL_BYTES = 4 * 2**30
MAX_ASCII_STL_BYTES = 2**30


class FabricationFileError(InputFileError, FabricationError):
    """A fabrication file (STL, manifest.json) that is unreadable or malformed: an
    :class:`~diffractive._read.InputFileError` (``path``, ``where``, ``problem``) that is also a
    :class:`~diffractive.errors.FabricationError`."""


def _as_fabrication_error(e: InputFileError) -> FabricationFileError:
    return e if isinstance(e, FabricationFileError) else FabricationFileError(e.path, e.problem, e.where)

SW, SE, NE, NW, ZERO = 0, 1, 2, 3, 4
_DIAG = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) / np.sqrt(2.0)


@dataclass
class HeightField:
    """Cells ``levels[j, i]`` span ``x_mm[i]..x_mm[i+1]`` and ``y_mm[j]..y_mm[j+1]``.

    ``x_mm`` (nx+1,) and ``y_mm`` (ny+1,) are strictly increasing node coordinates in mm;
    ``levels`` (ny, nx) non-negative integers, the height in printer layers of
    ``z_step_mm`` (mm; 0 = no material).
    ``fan_bottom`` = (j0, j1, i0, i1): a rectangle of cells, all with material, whose bottom
    is one fan (saves two triangles per cell in the active area).
    """

    x_mm: np.ndarray
    y_mm: np.ndarray
    levels: np.ndarray
    z_step_mm: float
    fan_bottom: tuple[int, int, int, int] | None = None

    def __post_init__(self):
        self.x_mm = np.asarray(self.x_mm, dtype=np.float64)
        self.y_mm = np.asarray(self.y_mm, dtype=np.float64)
        self.levels = np.asarray(self.levels)
        ny, nx = self.levels.shape
        if self.x_mm.shape != (nx + 1,) or self.y_mm.shape != (ny + 1,):
            raise FabricationError(f"node coordinates must have {nx + 1} x and {ny + 1} y values")
        if np.any(np.diff(self.x_mm) <= 0) or np.any(np.diff(self.y_mm) <= 0):
            raise FabricationError("node coordinates must increase strictly")
        if not np.issubdtype(self.levels.dtype, np.integer) or np.any(self.levels < 0):
            raise FabricationError("levels must be non-negative integers (printer layers)")
        if self.fan_bottom is not None:
            j0, j1, i0, i1 = self.fan_bottom
            if not (0 <= j0 < j1 <= ny and 0 <= i0 < i1 <= nx) or np.any(self.levels[j0:j1, i0:i1] <= 0):
                raise FabricationError("fan_bottom must be a rectangle of cells that all hold material")

    def volume_mm3(self) -> float:
        """Exact volume of the solid in mm^3: sum of cell area x height."""
        area = np.outer(np.diff(self.y_mm), np.diff(self.x_mm))
        return float(np.sum(area * self.levels.astype(np.float64)) * self.z_step_mm)


@dataclass
class Mesh:
    """Indexed triangle mesh: ``vertices`` (V, 3) float64 in mm, ``faces`` (F, 3) vertex indices
    (outward normals); ``n_saddles`` counts the extra saddle vertices (see module docstring)."""

    vertices: np.ndarray  # (V, 3) float64, mm
    faces: np.ndarray     # (F, 3) int32 or int64
    n_saddles: int = 0

    @property
    def n_faces(self) -> int:
        """Number of triangles F."""
        return int(len(self.faces))


def _vertex_table(Q, need_zero):
    """Unique (node, level) vertices.

    Returns ``ids`` (Nn*5,) int32: the vertex of quadrant q's level at node k is
    ``ids[5*k + q]`` and of level 0 is ``ids[5*k + 4]`` (only meaningful where
    ``need_zero``), plus each vertex's node and level.
    """
    nn = Q.shape[0]
    T = np.empty((nn, 5), dtype=Q.dtype)
    T[:, :4] = Q
    # a node whose level-0 vertex no face uses gets a copy of an existing level instead
    T[:, 4] = np.where(need_zero, 0, Q[:, 0])
    order = np.argsort(T, axis=1, kind="stable")
    Ts = np.take_along_axis(T, order, axis=1)
    new = np.ones_like(Ts, dtype=bool)
    np.not_equal(Ts[:, 1:], Ts[:, :-1], out=new[:, 1:])
    new &= (Ts[:, 4] > 0)[:, None]          # a node with no material around it has no vertex
    uid = (np.cumsum(new.ravel(), dtype=np.int64) - 1).astype(np.int32).reshape(nn, 5)
    ids = np.empty_like(uid)
    np.put_along_axis(ids, order, uid, axis=1)
    rows, cols = np.nonzero(new)
    return ids.ravel(), rows, Ts[rows, cols]


def _wall_triangles(ids, levq, nodeP, nodeQ, qP_lo, qP_hi, qP_o, qQ_lo, qQ_hi, qQ_o, flipP, flipQ,
                    splitP, splitQ, za, m_index):
    """Triangles of a batch of walls (see module docstring); returns (T, 3) int32.

    ``ids``/``levq`` are flat (node*5 + quadrant) tables; ``q*_o`` the two other quadrants.
    """
    out = []
    for side in ("P", "Q"):
        if side == "P":
            node, q_lo, q_hi, q_o, flip, split = nodeP, qP_lo, qP_hi, qP_o, flipP, splitP
            apex = ids[nodeQ * 5 + qQ_lo]                  # bottom corner of the other side
        else:
            node, q_lo, q_hi, q_o, flip, split = nodeQ, qQ_lo, qQ_hi, qQ_o, flipQ, splitQ
            apex = ids[nodeP * 5 + qP_hi]                  # top corner of the other side
        base = node * 5
        lo, hi = levq[base + q_lo], levq[base + q_hi]
        lo_id, hi_id = ids[base + q_lo], ids[base + q_hi]
        o1, o2 = levq[base + q_o[0]], levq[base + q_o[1]]
        i1, i2 = ids[base + q_o[0]], ids[base + q_o[1]]
        swap = o1 > o2
        o1, o2 = np.where(swap, o2, o1), np.where(swap, o1, o2)
        i1, i2 = np.where(swap, i2, i1), np.where(swap, i1, i2)
        in1 = (o1 > lo) & (o1 < hi)
        in2 = (o2 > lo) & (o2 < hi)
        # points lo <= m1 <= m2 <= hi along this side; absent middle points repeat the previous one
        m1 = np.where(in1, o1, lo)
        m1_id = np.where(in1, i1, lo_id)
        m2 = np.where(in2, o2, m1)
        m2_id = np.where(in2, i2, m1_id)
        n = len(node)
        lev = (lo, m1, m2, hi)
        vid = (lo_id, m1_id, m2_id, hi_id)
        tri = np.empty((n, 3, 3), dtype=np.int32)
        valid = np.empty((n, 3), dtype=bool)
        for k in range(3):
            tri[:, k, 0] = apex
            tri[:, k, 1] = vid[k]
            tri[:, k, 2] = vid[k + 1]
            valid[:, k] = lev[k + 1] > lev[k]
        extra = None
        if split is not None and np.any(split):
            # the saddle segment [za, zb] of this side's node goes through the extra vertex M
            w = np.nonzero(split)[0]
            zw = za[node[w]]
            seg = valid[w] & np.stack([lo[w] == zw, m1[w] == zw, m2[w] == zw], axis=1)
            k = np.argmax(seg, axis=1)
            if not np.all(seg[np.arange(len(w)), k]):
                raise AssertionError("saddle segment not found on a wall side")
            m = m_index[node[w]]
            extra = np.column_stack([apex[w], m, tri[w, k, 2]])
            tri[w, k, 2] = m
        t = tri[valid]
        f = np.broadcast_to(flip[:, None], valid.shape)[valid]
        if extra is not None:
            t = np.concatenate([t, extra])
            f = np.concatenate([f, flip[w]])
        t[f] = t[f][:, ::-1]
        out.append(t)
    return np.concatenate(out)


def _quads(a, b, c, d):
    """Two triangles (a, b, c), (a, c, d) per quad, as one (2N, 3) int32 array."""
    n = len(a)
    out = np.empty((2 * n, 3), dtype=np.int32)
    out[:n, 0], out[:n, 1], out[:n, 2] = a, b, c
    out[n:, 0], out[n:, 1], out[n:, 2] = a, c, d
    return out


def height_field_mesh(hf: HeightField, saddle_offset_mm: float = 1e-3) -> Mesh:
    """Closed, outward-wound triangle mesh of a :class:`HeightField` (see module docstring).

    ``saddle_offset_mm``: how far (mm) the extra vertex of a saddle sits inside its cell.
    Raises :class:`FabricationError` if two cells with material touch only at a corner at z = 0.
    """
    L = hf.levels.astype(np.int32)
    ny, nx = L.shape
    Hp = np.zeros((ny + 2, nx + 2), dtype=np.int32)
    Hp[1:-1, 1:-1] = L
    nxn = nx + 1
    # levels of the four cells around each node: SW, SE, NE, NW
    Q = np.empty((ny + 1, nx + 1, 4), dtype=np.int32)
    Q[..., SW], Q[..., SE], Q[..., NE], Q[..., NW] = Hp[:-1, :-1], Hp[:-1, 1:], Hp[1:, 1:], Hp[1:, :-1]
    Q = Q.reshape(-1, 4)
    # a node needs a vertex at z = 0 if a cell around it is empty or has a per-cell bottom
    percell = (Hp > 0)
    if hf.fan_bottom is not None:
        j0, j1, i0, i1 = hf.fan_bottom
        percell[j0 + 1:j1 + 1, i0 + 1:i1 + 1] = False
    need_zero = (((Hp[:-1, :-1] == 0) | (Hp[:-1, 1:] == 0) | (Hp[1:, 1:] == 0) | (Hp[1:, :-1] == 0))
                 & (Q.reshape(ny + 1, nx + 1, 4).max(axis=-1) > 0)
                 | percell[:-1, :-1] | percell[:-1, 1:] | percell[1:, 1:] | percell[1:, :-1]).ravel()
    if hf.fan_bottom is not None:   # the fan's rim
        ring_nodes = np.concatenate([
            j0 * nxn + np.arange(i0, i1 + 1),                     # bottom edge, left to right
            np.arange(j0 + 1, j1 + 1) * nxn + i1,                 # right edge, upwards
            j1 * nxn + np.arange(i1 - 1, i0 - 1, -1),             # top edge, right to left
            np.arange(j1 - 1, j0, -1) * nxn + i0])                # left edge, downwards
        need_zero[ring_nodes] = True
    ids, v_node, v_level = _vertex_table(Q, need_zero)
    levq = np.concatenate([Q, np.zeros((len(Q), 1), dtype=np.int32)], axis=1).ravel()

    # saddles: a diagonal pair strictly above the other pair
    a_hi = np.minimum(Q[:, SW], Q[:, NE]) > np.maximum(Q[:, SE], Q[:, NW])
    b_hi = np.minimum(Q[:, SE], Q[:, NW]) > np.maximum(Q[:, SW], Q[:, NE])
    saddle = a_hi | b_hi
    sad_nodes = np.nonzero(saddle)[0]
    za = np.where(a_hi, np.maximum(Q[:, SE], Q[:, NW]), np.maximum(Q[:, SW], Q[:, NE]))
    zb_s = np.where(a_hi[sad_nodes], np.minimum(Q[sad_nodes, SW], Q[sad_nodes, NE]),
                    np.minimum(Q[sad_nodes, SE], Q[sad_nodes, NW]))
    if np.any(za[sad_nodes] == 0):
        raise FabricationError("two cells with material touch only at a corner at the bottom (z = 0); "
                         "the solid would not be manifold")
    n_keyed = len(v_node)
    m_index = np.full(len(Q), -1, dtype=np.int32)
    m_index[sad_nodes] = n_keyed + np.arange(len(sad_nodes), dtype=np.int32)
    wedge = np.where(a_hi[sad_nodes], SW, SE)
    V = np.empty((n_keyed + len(sad_nodes) + (hf.fan_bottom is not None), 3), dtype=np.float64)
    jn, in_ = np.divmod(v_node, nxn)
    V[:n_keyed, 0], V[:n_keyed, 1], V[:n_keyed, 2] = hf.x_mm[in_], hf.y_mm[jn], v_level * hf.z_step_mm
    js, is_ = np.divmod(sad_nodes, nxn)
    S = slice(n_keyed, n_keyed + len(sad_nodes))
    V[S, 0] = hf.x_mm[is_] + saddle_offset_mm * _DIAG[wedge, 0]
    V[S, 1] = hf.y_mm[js] + saddle_offset_mm * _DIAG[wedge, 1]
    V[S, 2] = 0.5 * (za[sad_nodes] + zb_s) * hf.z_step_mm

    faces = []
    # --- tops (cell is NE of its SW node, NW of its SE node, ...)
    cj, ci = np.nonzero(L > 0)
    k = (cj * nxn + ci) * 5
    faces.append(_quads(ids[k + NE], ids[k + 5 + NW], ids[k + 5 * nxn + 5 + SW], ids[k + 5 * nxn + SE]))
    # --- bottoms
    cj, ci = np.nonzero(percell[1:-1, 1:-1])
    k = (cj * nxn + ci) * 5 + ZERO
    faces.append(_quads(ids[k], ids[k + 5 * nxn], ids[k + 5 * nxn + 5], ids[k + 5]))
    if hf.fan_bottom is not None:
        ring = ids[ring_nodes * 5 + ZERO]
        c = len(V) - 1
        V[c] = (0.5 * (hf.x_mm[i0] + hf.x_mm[i1]), 0.5 * (hf.y_mm[j0] + hf.y_mm[j1]), 0.0)
        fan = np.empty((len(ring), 3), dtype=np.int32)
        fan[:, 0], fan[:, 1], fan[:, 2] = c, np.roll(ring, -1), ring
        faces.append(fan)

    # --- walls on lines x = const: west cell Hp[r+1, b], east cell Hp[r+1, b+1]; P = node (r, b), Q = (r+1, b)
    hw, he = Hp[1:-1, :-1], Hp[1:-1, 1:]
    r, b = np.nonzero(hw != he)
    if len(r):
        west_hi = hw[r, b] > he[r, b]
        nodeP = r * nxn + b
        nodeQ = nodeP + nxn
        qP_lo = np.where(west_hi, NE, NW)
        qQ_lo = np.where(west_hi, SE, SW)
        faces.append(_wall_triangles(ids, levq, nodeP, nodeQ, qP_lo, (NE + NW) - qP_lo, (SW, SE),
                                     qQ_lo, (SE + SW) - qQ_lo, (NE, NW), flipP=west_hi, flipQ=~west_hi,
                                     splitP=None, splitQ=saddle[nodeQ], za=za, m_index=m_index))
    # --- walls on lines y = const: south cell Hp[a, c+1], north Hp[a+1, c+1]; P = node (a, c), Q = (a, c+1)
    hs, hn = Hp[:-1, 1:-1], Hp[1:, 1:-1]
    a, c = np.nonzero(hs != hn)
    if len(a):
        north_hi = hn[a, c] > hs[a, c]
        nodeP = a * nxn + c
        nodeQ = nodeP + 1
        qP_lo = np.where(north_hi, SE, NE)
        qQ_lo = np.where(north_hi, SW, NW)
        faces.append(_wall_triangles(ids, levq, nodeP, nodeQ, qP_lo, (SE + NE) - qP_lo, (SW, NW),
                                     qQ_lo, (SW + NW) - qQ_lo, (SE, NE), flipP=north_hi, flipQ=~north_hi,
                                     # the wall east of a node bounds the SE wedge, the wall west the SW wedge
                                     splitP=b_hi[nodeP], splitQ=a_hi[nodeQ], za=za, m_index=m_index))
    return Mesh(vertices=V, faces=np.concatenate(faces), n_saddles=int(len(sad_nodes)))


# --------------------------------------------------------------------------- binary STL
_STL_DTYPE = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])


def write_stl(path, vertices, faces, header: str = "", chunk=1_000_000) -> tuple[str, float]:
    """Write a binary STL (coordinates as given, i.e. mm); return (SHA-256 hex, volume).

    ``vertices`` (V, 3), ``faces`` (F, 3) vertex indices; ``header`` ASCII, cut to 80 bytes;
    ``chunk`` faces are converted per write. The volume (cubed coordinate units: mm^3;
    divergence theorem, float64 sums) is that of the float32 triangles as written. Writes
    ``path`` directly; callers wanting atomicity write to a temporary name.
    """
    head = header.encode("ascii", "replace")[:80].ljust(80, b" ")
    if head[:5].lower() == b"solid":  # an ASCII-STL sniffer would be fooled
        head = b"d2nn " + head[:75]
    h = hashlib.sha256()
    vf = np.asarray(vertices, dtype=np.float32)
    volume = 0.0
    rec = np.zeros(min(chunk, len(faces)), dtype=_STL_DTYPE)
    with open(path, "wb") as f:
        for blob in (head, np.uint32(len(faces)).tobytes()):
            f.write(blob)
            h.update(blob)
        for s in range(0, len(faces), chunk):
            fc = faces[s:s + chunk]
            r = rec[:len(fc)]
            tri = vf[fc]
            r["v"] = tri
            n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            volume += float(np.einsum("ij,ij->i", tri[:, 0], n).sum(dtype=np.float64))
            norm = np.sqrt(np.einsum("ij,ij->i", n, n))[:, None]
            np.divide(n, norm, out=n, where=norm > 0)
            r["normal"] = n
            buf = memoryview(r.view(np.uint8))
            f.write(buf)
            h.update(buf)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest(), volume / 6.0


def read_stl_triangles(path) -> np.ndarray:
    """Triangles (F, 3, 3) float32 from an STL file: binary, or ASCII as a fallback.

    Read through :mod:`diffractive._read` (a regular, readable file; at most
    :data:`MAX_STL_BYTES`). A file whose size is the 84 + 50 x count bytes its binary
    header declares is binary (even if the header starts with ``solid``); else one that
    starts with ``solid`` (and has no NUL byte in its first 84) is parsed as ASCII
    (strictly: every facet ``facet normal n n n``, ``outer loop``, three ``vertex x y z``,
    ``endloop``, ``endfacet``; ``endsolid`` at the end); anything else is a truncated or damaged binary STL, and the error says so with
    both sizes. No triangles, or a NaN/infinite coordinate, is refused too. Every error is
    a :class:`FabricationFileError` naming the file (and the line, for ASCII).
    """
    try:
        path = check_regular_file(path)
        size = path.stat().st_size
        if size > MAX_STL_BYTES:
            raise InputFileError(path, f"is {size:,} bytes, more than the {MAX_STL_BYTES:,} an STL may have here")
        with open(path, "rb") as f:
            head = f.read(84)
            n = int(np.frombuffer(head[80:84], dtype="<u4")[0]) if len(head) == 84 else None
            if n is not None and size == 84 + 50 * n:
                data = np.fromfile(f, dtype=_STL_DTYPE, count=n)
                tri = np.ascontiguousarray(data["v"])
            elif head[:5].lower() == b"solid" and b"\0" not in head:  # ASCII text has no NUL byte
                tri = None
            elif n is None:
                raise InputFileError(path, f"is truncated: {size} bytes, fewer than the 84-byte header of a binary STL")
            else:
                raise InputFileError(path, f"is truncated or damaged: its binary STL header declares {n:,} triangles "
                                           f"({84 + 50 * n:,} bytes) but the file has {size:,} bytes")
        if tri is None:
            tri = _ascii_stl_triangles(path)
        if len(tri) == 0:
            raise InputFileError(path, "holds no triangles")
        finite_array(path, "vertices", tri, kinds="f")
        return tri
    except InputFileError as e:
        raise _as_fabrication_error(e) from None
    except OSError as e:
        raise FabricationFileError(path, f"cannot be read ({e.strerror or e})") from None


def _ascii_stl_triangles(path) -> np.ndarray:
    """Triangles (F, 3, 3) float32 of the ASCII STL ``path``; InputFileError naming the line otherwise."""
    text = read_text(path, max_bytes=MAX_ASCII_STL_BYTES)
    # state: what the next line may be (a strict reading of the format, one keyword per line)
    verts: list = []
    state, in_loop = "solid", 0
    expect = {"solid": ("solid",), "body": ("facet", "endsolid"), "outer": ("outer",), "vertex": ("vertex",),
              "endloop": ("endloop",), "endfacet": ("endfacet",), "after": ("solid",)}
    for lineno, line in enumerate(text.splitlines(), 1):
        w = line.split()
        if not w:
            continue
        if w[0] not in expect[state]:
            raise InputFileError(path, f"is not a valid ASCII STL: expected {' or '.join(expect[state])!r}, "
                                       f"found {line.strip()[:60]!r}", where=f"line {lineno}")
        if w[0] in ("facet", "vertex"):
            nums = w[2:] if w[0] == "facet" else w[1:]
            ok = len(nums) == 3 and (w[0] == "vertex" or w[1] == "normal")
            try:
                xyz = [float(v) for v in nums] if ok else None
            except ValueError:
                xyz = None
            if xyz is None:
                raise InputFileError(path, f"is not a valid ASCII STL: {line.strip()[:60]!r} is not "
                                           f"'{'facet normal' if w[0] == 'facet' else 'vertex'}' and three numbers",
                                     where=f"line {lineno}")
            if w[0] == "vertex":
                verts.append(xyz)
                in_loop += 1
        state = {"solid": "body", "facet": "outer", "outer": "vertex", "endloop": "endfacet", "endfacet": "body",
                 "endsolid": "after", "vertex": "vertex" if in_loop < 3 else "endloop"}[w[0]]
        if w[0] == "endloop":
            in_loop = 0
    if state != "after":
        raise InputFileError(path, "is truncated: the ASCII STL ends before its 'endsolid' line")
    return np.asarray(verts, dtype=np.float32).reshape(-1, 3, 3)


def sha256_file(path, bufsize=1 << 22) -> str:
    """SHA-256 hex digest of the file ``path`` (read in chunks of ``bufsize`` bytes; a regular file)."""
    h = hashlib.sha256()
    try:
        path = check_regular_file(path)
    except InputFileError as e:
        raise _as_fabrication_error(e) from None
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
