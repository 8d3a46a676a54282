"""What a spec may say, torch-free: the bottom layer. Pre-training, fine-tuning and study specs
(pydantic models), the valid ranges of every numeric field (``bounds``), validation problems at
their key paths (``problems``) and what a spec may name."""
