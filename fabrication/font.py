"""A 5x7 bitmap font for the marks cut into plates and holder (digits and a few letters).

``glyph_cells(text)`` returns the lit cells as (column, row) pairs with row 0 at the
*bottom*, so text is readable when seen from +z with x to the right and y up.
"""
from __future__ import annotations

from .materials import FabricationError

_FONT = {
    "0": [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    "1": ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    "2": [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    "3": ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
    "4": ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    "5": ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    "6": ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
    "7": ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    "8": [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    "9": [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
    "L": ["#....", "#....", "#....", "#....", "#....", "#....", "#####"],
    "I": [".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."],
    "N": ["#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"],
    "O": [".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
    "U": ["#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
    "T": ["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."],
    "D": ["####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."],
    "E": ["#####", "#....", "#....", "####.", "#....", "#....", "#####"],
    "^": ["..#..", ".###.", "#.#.#", "..#..", "..#..", "..#..", "..#.."],
    "-": [".....", ".....", ".....", "#####", ".....", ".....", "....."],
    " ": [".....", ".....", ".....", ".....", ".....", ".....", "....."],
}

GLYPH_W, GLYPH_H, ADVANCE = 5, 7, 6


def supported(text: str) -> bool:
    """Whether every character of ``text`` is in the mark font."""
    return all(ch in _FONT for ch in text)


def text_width_cells(text: str) -> int:
    """Width of ``text`` in glyph cells: ``GLYPH_W`` per character, one blank cell between characters (0 if empty)."""
    return max(0, ADVANCE * len(text) - 1)


def glyph_cells(text: str) -> list[tuple[int, int]]:
    """Lit cells of ``text`` as (column, row) with row 0 at the bottom."""
    cells = []
    for k, ch in enumerate(text):
        try:
            rows = _FONT[ch]
        except KeyError:
            raise FabricationError(f"character {ch!r} is not in the mark font") from None
        for r, line in enumerate(rows):
            for c, px in enumerate(line):
                if px == "#":
                    cells.append((k * ADVANCE + c, GLYPH_H - 1 - r))
    return cells
