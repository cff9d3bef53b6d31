"""llama.cpp's server dialect (``/completion``, ``/infill``): its request bodies, response
shapes, stop rules and error shape, for the editor plugins written against llama.cpp."""

from __future__ import annotations

from deepseek_serve.routes.llama_cpp import completion, infill
from deepseek_serve.routes.llama_cpp.protocol import LLAMA_CPP

dialect = LLAMA_CPP
routes = [*completion.routes, *infill.routes]
