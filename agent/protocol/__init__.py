"""Wire shapes of every API the gateway speaks, as pure pydantic models.

One module per API: `openai` (also vLLM's extras), `ollama`, `mqtt` (the MQTT convention)
and `legacy` (the older FastAPI ONNX engine). Each holds the request models with
`to_internal()`, the typed responses, stream chunks and errors, and the encoders from the
internal types. The HTTP routes, the MQTT bridge and the cloud backends (which speak OpenAI
and Ollama upstream) all use them; nothing here imports FastAPI or paho.
"""
