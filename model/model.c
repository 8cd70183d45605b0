/* model.c - placeholder until the forward pass lands (issue 4). */
#include "model/model.h"
