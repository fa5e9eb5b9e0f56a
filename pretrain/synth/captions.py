"""Caption templates: a fixed, documented `template` vocabulary and a disjoint `unseen` one for paraphrase tests.

Every caption names everything in world.attribute_key (size, colour, shape, events in order, target colour,
second object, background), so a test caption picks out exactly one test video.

Template vocabulary (TEMPLATE_VOCAB, computed from TEMPLATE below; a test keeps this list in sync), besides
FUNCTION_WORDS:
  colours: black blue green orange purple red white yellow
  shapes: ball circle cross ring square star triangle;  sizes: big large little small
  events: appearing appears around away bigger bounces bouncing changes changing chases colour disappearing
    disappears down fades fading falling falls following follows gets getting goes growing grows jumps
    left moves moving out places right rises rising rotates rotating shows shrinking shrinks slides sliding
    smaller spinning spins swap swaps trade turning turns up
  backgrounds: background flat gradient noisy over plain textured;  order: first then
"""
from __future__ import annotations

import re

import numpy as np

from .world import COLOUR_NAMES

# Words either style may use; everything else in an `unseen` caption must be absent from TEMPLATE_VOCAB.
FUNCTION_WORDS = frozenset({"a", "an", "the", "it", "its", "and", "to", "from", "into", "of", "with", "in", "on",
                            "is", "as", "this", "that", "which", "there"})

TEMPLATE = {
    "det": ["a", "the"],
    "np": ["{det} {size} {colour} {shape}"],
    "np2": ["{det} {colour} {shape}"],  # the second object shares the first one's size
    "colour": {c: [c] for c in COLOUR_NAMES},
    "shape": {"circle": ["circle", "ball"], "square": ["square"], "triangle": ["triangle"], "star": ["star"],
              "ring": ["ring"], "cross": ["cross"]},
    "size": {"small": ["small", "little"], "large": ["large", "big"]},
    "event": {
        "left": ["moves left", "slides to the left", "goes left"],
        "right": ["moves right", "slides to the right", "goes right"],
        "up": ["moves up", "rises", "goes up"],
        "down": ["moves down", "falls", "goes down"],
        "grow": ["grows", "gets bigger"],
        "shrink": ["shrinks", "gets smaller"],
        "spin": ["spins", "rotates", "turns around"],
        "bounce": ["bounces", "bounces up and down", "jumps"],
        "appear": ["appears", "fades in", "shows up"],
        "disappear": ["disappears", "fades out", "fades away"],
        "recolour": ["changes from {c1} to {c2}", "turns {c2}", "changes colour from {c1} to {c2}"],
    },
    "event_ing": {
        "left": ["moving left", "sliding to the left"],
        "right": ["moving right", "sliding to the right"],
        "up": ["moving up", "rising"],
        "down": ["moving down", "falling"],
        "grow": ["growing", "getting bigger"],
        "shrink": ["shrinking", "getting smaller"],
        "spin": ["spinning", "rotating"],
        "bounce": ["bouncing", "bouncing up and down"],
        "appear": ["appearing", "fading in"],
        "disappear": ["disappearing", "fading out"],
        "recolour": ["changing from {c1} to {c2}", "turning from {c1} to {c2}"],
    },
    "background": {
        "plain": ["on a plain background", "on a flat background"],
        "gradient": ["on a gradient background", "over a gradient"],
        "noise": ["on a noisy background", "on a textured background"],
    },
    "single": ["{np} {vp} {bg}", "{np} {ving} {bg}", "{bg}, {np} {vp}"],
    "double": ["first {np} {vp1}, then it {vp2} {bg}", "{np} {vp1} and then {vp2} {bg}",
               "{bg}, {np} first {vp1} and then {vp2}"],
    "swap": ["{np} and {np2} swap places {bg}", "{np} and {np2} trade places {bg}",
             "{np} swaps places with {np2} {bg}"],
    "follow": ["{np} follows {np2} {bg}", "{np} chases {np2} {bg}", "{np} is following {np2} {bg}"],
}

# Synonyms and sentence frames that never occur in TEMPLATE: measures generalisation to new wording.
UNSEEN = {
    "det": ["a", "the"],
    "np": ["{det} {size} {colour} {shape}"],
    "np2": ["{det} {colour} {shape}"],
    "colour": {"red": ["crimson", "scarlet"], "green": ["emerald", "jade"], "blue": ["azure", "cobalt"],
               "yellow": ["golden", "lemon"], "purple": ["violet", "lilac"], "orange": ["tangerine", "amber"],
               "white": ["ivory", "snowy"], "black": ["ebony", "inky"]},
    "shape": {"circle": ["disc", "orb"], "square": ["box", "block"], "triangle": ["wedge", "pyramid"],
              "star": ["pentagram", "starburst"], "ring": ["hoop", "donut"], "cross": ["plus", "crosshair"]},
    "size": {"small": ["tiny", "miniature"], "large": ["huge", "giant"]},
    "event": {
        "left": ["drifts leftward", "glides leftward", "travels leftward"],
        "right": ["drifts rightward", "glides rightward", "travels rightward"],
        "up": ["ascends", "climbs", "floats upward"],
        "down": ["descends", "sinks", "drops downward"],
        "grow": ["swells", "enlarges", "inflates"],
        "shrink": ["dwindles", "diminishes", "contracts"],
        "spin": ["twirls", "whirls", "pivots"],
        "bounce": ["bobs", "hops", "rebounds"],
        "appear": ["emerges", "materializes", "pops into view"],
        "disappear": ["vanishes", "evaporates", "dissolves"],
        "recolour": ["shifts from {c1} to {c2}", "morphs into {c2}", "transforms from {c1} into {c2}"],
    },
    "event_ing": {},  # unseen frames use finite verbs only
    "background": {
        "plain": ["against a uniform backdrop", "atop a blank canvas"],
        "gradient": ["against a graduated backdrop", "atop a shaded canvas"],
        "noise": ["against a grainy backdrop", "atop a speckled canvas"],
    },
    "single": ["watch as {np} {vp} {bg}", "{bg} there is {np} which {vp}", "in this clip {np} {vp} {bg}"],
    "double": ["initially {np} {vp1}; afterwards it {vp2} {bg}", "{np} {vp1} and later {vp2} {bg}",
               "before it {vp2}, {np} {vp1} {bg}"],
    "swap": ["{np} and {np2} exchange positions {bg}", "{np} and {np2} interchange locations {bg}",
             "{bg} {np} exchanges spots with {np2}"],
    "follow": ["{np} pursues {np2} {bg}", "{np} trails behind {np2} {bg}", "{bg} {np} tails {np2}"],
}
STYLES = {"template": TEMPLATE, "unseen": UNSEEN}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _table_words(table) -> set[str]:
    if isinstance(table, dict):
        return set().union(*(_table_words(v) for v in table.values())) if table else set()
    if isinstance(table, list):
        return set().union(*(_table_words(v) for v in table)) if table else set()
    return set(words(re.sub(r"\{\w+\}", " ", table)))


TEMPLATE_VOCAB = frozenset(_table_words(TEMPLATE))
UNSEEN_VOCAB = frozenset(_table_words(UNSEEN))


def content_words(text: str) -> set[str]:
    return set(words(text)) - FUNCTION_WORDS


# Which random number phrases each event: an event and its time-reverse share one, and an event keeps
# its phrasing wherever it sits in the sentence, so twin captions differ only in what changed in time.
_EVENT_SLOT = {"left": 14, "right": 14, "up": 15, "down": 15, "grow": 16, "shrink": 16, "appear": 17,
               "disappear": 17, "spin": 18, "bounce": 19, "recolour": 20}


def caption(a: dict, rng: np.random.Generator, style: str = "template") -> str:
    """One caption of attributes a. Draws a fixed number of numbers from rng whatever a says, so twins
    captioned from equal seeds use parallel phrasings ("moves left" vs "moves right")."""
    table = STYLES[style]
    u = rng.random(24)

    def pick(options, i):
        return options[int(u[i] * len(options))]

    def verb(event, ing=False):
        phrase = pick((table["event_ing"] if ing else table["event"])[event], _EVENT_SLOT[event])
        return phrase.format(c1=pick(table["colour"][a["colour"]], 3),
                             c2=pick(table["colour"].get(a["to_colour"], [""]), 6))

    np1 = pick(table["np"], 0).format(det=pick(table["det"], 1), size=pick(table["size"][a["size"]], 2),
                                      colour=pick(table["colour"][a["colour"]], 3),
                                      shape=pick(table["shape"][a["shape"]], 4))
    bg = pick(table["background"][a["background"]], 5)
    events = a["events"]
    if a["other"]:
        other = a["other"]
        np2 = pick(table["np2"], 10).format(det=pick(table["det"], 11),
                                            colour=pick(table["colour"][other["colour"]], 12),
                                            shape=pick(table["shape"][other["shape"]], 13))
        text = pick(table[events[0]], 9).format(np=np1, np2=np2, bg=bg)
    elif len(events) == 1:
        frames = [f for f in table["single"] if "{ving}" not in f or events[0] in table["event_ing"]]
        frame = pick(frames, 9)
        text = frame.format(np=np1, bg=bg, vp=verb(events[0]) if "{vp}" in frame else "",
                            ving=verb(events[0], ing=True) if "{ving}" in frame else "")
    else:
        text = pick(table["double"], 9).format(np=np1, bg=bg, vp1=verb(events[0]), vp2=verb(events[1]))
    return " ".join(text.split())


def captions(a: dict, rng: np.random.Generator, k: int, style: str = "template") -> list[str]:
    """Up to k distinct paraphrases of a (fewer only if the tables run out)."""
    out = []
    for _ in range(20 * k):
        c = caption(a, rng, style)
        if c not in out:
            out.append(c)
            if len(out) == k:
                break
    return out
