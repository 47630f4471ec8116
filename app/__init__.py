"""The HiCo Gradio app: a thin layer of UI over the hico package."""
