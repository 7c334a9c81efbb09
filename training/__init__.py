"""DINO self-supervised pretraining of timm ViTs (student/teacher self-distillation)."""
