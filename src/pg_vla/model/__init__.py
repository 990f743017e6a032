"""Model code: the PaliGemma expert (SigLIP + Gemma), the action expert and the joint pi0 model."""
