"""verl function tool for bench_agent_loop.py's baseline: delivers scripted user turns as tool responses.

The canned policy calls ``next_user_turn(turn=k)``; the tool answers with the same text and images
(decoded from the same PNG bytes) that ``am3_dialogue`` replays as user turns.
"""

import io

from PIL import Image
from verl.tools.function_tool import function_tool
from verl.tools.schemas import ToolResponse

from bench_agent_loop_data import USER_TEXTS, later_turn_images


@function_tool
def next_user_turn(turn: int, with_image: bool) -> ToolResponse:
    """Return the user's next message of the scripted dialogue.

    Args:
        turn: 1-based index of the later user turn.
        with_image: whether this dialogue carries a second image.
    """
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in later_turn_images(turn, with_image)]
    return ToolResponse(text=USER_TEXTS[turn], image=images) if images else ToolResponse(text=USER_TEXTS[turn])
