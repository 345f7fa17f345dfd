# Scale out (docs/scale.md): SLURM submission with requeue, W&B sweeps and agents.
NODES ?= 1
GPUS ?= 8
TRAINER ?= ddp
SWEEP ?=
SWEEP_ID ?=
COUNT ?= 1
DRY ?=
SLURM_FLAGS ?=

.PHONY: slurm sweep sweep-check agent slurm-agent

slurm: install ## Render + sbatch a training job: make slurm EXP=name NODES=2 GPUS=8 [TRAINER=ddp|fsdp|ddp_cpu] [DRY=1] [ARGS="k=v ... [resume=<run dir>]"]
	$(BIN)/python -m experiments.slurm train $(EXP) --nodes $(NODES) --gpus $(GPUS) --trainer $(TRAINER) $(if $(DRY),--dry) $(SLURM_FLAGS) -- $(ARGS)

sweep-check: install ## Check a W&B sweep file against the Hydra config, offline: make sweep-check SWEEP=contrastive_lr
	@test -n "$(SWEEP)" || { echo 'usage: make sweep-check SWEEP=<name under experiments/sweeps>'; exit 2; }
	$(BIN)/python -m experiments.sweep check $(SWEEP)

sweep: install ## Create a W&B sweep from experiments/sweeps/<SWEEP>.yaml and print its id: make sweep SWEEP=contrastive_lr
	@test -n "$(SWEEP)" || { echo 'usage: make sweep SWEEP=<name under experiments/sweeps>'; exit 2; }
	$(BIN)/python -m experiments.sweep create $(SWEEP)

agent: install ## Run a W&B agent here: make agent SWEEP_ID=entity/project/id [COUNT=1]
	@test -n "$(SWEEP_ID)" || { echo 'usage: make agent SWEEP_ID=<id printed by make sweep>'; exit 2; }
	$(BIN)/python -m experiments.sweep agent $(SWEEP_ID) --count $(COUNT)

slurm-agent: install ## Render + sbatch a W&B agent job: make slurm-agent SWEEP_ID=... NODES=1 GPUS=8 [COUNT=4] [DRY=1]
	@test -n "$(SWEEP_ID)" || { echo 'usage: make slurm-agent SWEEP_ID=<id printed by make sweep>'; exit 2; }
	$(BIN)/python -m experiments.slurm agent $(SWEEP_ID) --nodes $(NODES) --gpus $(GPUS) --trainer $(TRAINER) --count $(COUNT) $(if $(DRY),--dry) $(SLURM_FLAGS) -- $(ARGS)
