"""PaliGemma parts: SigLIP vision tower, Gemma layers, processor and checkpoint loading."""
