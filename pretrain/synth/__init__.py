"""Procedural captioned-video world: attribute space, numpy rendering, captions, mp4 + annotations writing."""
from .captions import FUNCTION_WORDS, TEMPLATE_VOCAB, caption, content_words
from .dataset import generate
from .render import render_video
from .world import VideoSpec, is_held_out, max_test_videos, plan, reverse_attributes

__all__ = ["generate", "render_video", "VideoSpec", "plan", "caption", "content_words",
           "is_held_out", "max_test_videos", "reverse_attributes", "TEMPLATE_VOCAB", "FUNCTION_WORDS"]
