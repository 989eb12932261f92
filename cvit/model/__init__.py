"""Model building: HF MLLM families, the tiny offline models, LoRA / QLoRA."""
