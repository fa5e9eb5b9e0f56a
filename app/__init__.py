"""Command line (`vmr`) and the Gradio app: thin layers over `index/` and `retrieval/`."""
