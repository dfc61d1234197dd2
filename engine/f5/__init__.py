"""F5-TTS inference: config, DiT backbone, flow sampler, mel front end and the weight loader.

Import the submodules directly (`engine.f5.model`, `engine.f5.sampler`, ...); this package file
stays empty so that importing one piece does not pull in the others.
"""
