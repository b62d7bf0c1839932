"""Names the kernel knows the providing distribution of, for install hints.

Only used to print ``pip install ...`` when a name is missing; resolution itself
always goes through the installed plugins' entry points.
"""

_SCHEDULERS = {
    "kernel-sched-ddpm": ["DDPMScheduler"],
    "kernel-sched-ddim": ["DDIMScheduler", "DDIMInverseScheduler"],
    "kernel-sched-pndm": ["PNDMScheduler", "IPNDMScheduler"],
    "kernel-sched-lms": ["LMSDiscreteScheduler"],
    "kernel-sched-euler": ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"],
    "kernel-sched-heun": ["HeunDiscreteScheduler"],
    "kernel-sched-kdpm2": ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"],
    "kernel-sched-dpmsolver": [
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "DPMSolverMultistepInverseScheduler",
    ],
    "kernel-sched-dpmsolver-sde": ["DPMSolverSDEScheduler"],
    "kernel-sched-deis": ["DEISMultistepScheduler"],
    "kernel-sched-unipc": ["UniPCMultistepScheduler"],
    "kernel-sched-lcm": ["LCMScheduler"],
    "kernel-sched-tcd": ["TCDScheduler"],
    "kernel-sched-edm": ["EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"],
    "kernel-sched-cosine-dpmsolver": ["CosineDPMSolverMultistepScheduler"],
    "kernel-sched-flow-match": ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"],
    "kernel-sched-cm": ["CMStochasticIterativeScheduler"],
    "kernel-sched-score-sde": ["ScoreSdeVeScheduler", "ScoreSdeVpScheduler"],
    "kernel-sched-karras-ve": ["KarrasVeScheduler"],
    "kernel-sched-repaint": ["RePaintScheduler"],
    "kernel-sched-unclip": ["UnCLIPScheduler"],
    "kernel-sched-vq-diffusion": ["VQDiffusionScheduler"],
    "kernel-sched-consistency-decoder": ["ConsistencyDecoderScheduler"],
}

_MODELS = {
    "kernel-unet": ["UNet2DConditionModel", "UNet2DModel"],
    "kernel-autoencoders": ["AutoencoderKL", "AutoencoderTiny"],
    "kernel-sd": [
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
        "DDPMPipeline",
        "DDIMPipeline",
        "AutoPipelineForText2Image",
        "AutoPipelineForImage2Image",
        "AutoPipelineForInpainting",
        "sd",
        "sd2",
        "sdxl",
        "sdxl-refiner",
    ],
    "kernel-sd3": ["SD3Transformer2DModel", "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                   "StableDiffusion3InpaintPipeline", "sd3"],
    "kernel-flux": ["FluxTransformer2DModel", "FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "flux"],
    "kernel-pixart": ["PixArtTransformer2DModel", "PixArtAlphaPipeline", "PixArtSigmaPipeline", "pixart",
                      "pixart-sigma"],
    "kernel-controlnet": ["ControlNetModel", "SD3ControlNetModel", "FluxControlNetModel", "ControlNetUnionModel",
                          "StableDiffusionControlNetPipeline", "StableDiffusionXLControlNetPipeline"],
    "kernel-t2i-adapter": ["T2IAdapter", "MultiAdapter", "StableDiffusionAdapterPipeline"],
    "kernel-animatediff": ["MotionAdapter", "UNetMotionModel", "SparseControlNetModel", "AnimateDiffPipeline",
                           "animatediff"],
    "kernel-kandinsky": ["VQModel", "PriorTransformer", "KandinskyV22Pipeline", "KandinskyV22PriorPipeline",
                         "KandinskyV22CombinedPipeline", "KandinskyCombinedPipeline", "Kandinsky3Pipeline", "kandinsky22"],
    "kernel-cogvideo": ["CogVideoXTransformer3DModel", "AutoencoderKLCogVideoX", "CogVideoXPipeline", "cogvideox"],
    "kernel-stable-cascade": ["StableCascadeUNet", "PaellaVQModel", "StableCascadeCombinedPipeline", "stable-cascade"],
    "kernel-wuerstchen": ["WuerstchenPrior", "WuerstchenDiffNeXt", "WuerstchenCombinedPipeline", "wuerstchen"],
    "kernel-stable-audio": ["StableAudioDiTModel", "StableAudioPipeline", "stable-audio"],
    "kernel-audio": ["AudioLDMPipeline", "MusicLDMPipeline", "AudioLDM2Pipeline", "audioldm", "musicldm"],
    "kernel-dance-diffusion": ["UNet1DModel", "DanceDiffusionPipeline", "dance-diffusion"],
    "kernel-quant-bitsandbytes": ["BitsAndBytesConfig"],
    "kernel-quant-torchao": ["TorchAoConfig"],
    "kernel-quant-gguf": ["GGUFQuantizationConfig"],
    "kernel-memory": ["PipelineQuantizationConfig", "enable_model_cpu_offload", "enable_group_offload"],
}

KNOWN_PROVIDERS: dict[str, str] = {
    name: dist for table in (_SCHEDULERS, _MODELS) for dist, names in table.items() for name in names
}

