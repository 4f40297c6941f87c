// The precompiled header of every framework source (and of tests that use torch).
#pragma once

#include <torch/torch.h>
