# The modelled platform's walk-through: an API that returns a random integer between two bounds.
# Cells are separated by "# %%" lines, as in VS Code / Jupytext scripts.

# %%
# Declare the input once, and do not redefine it in the serving cell.
input_data = dict(left_bound=1, right_bound=10)

# %%
from random import randint
from random import seed

seed()

def generate_value(input_data):
    return dict(generated_value=randint(
        input_data["left_bound"],
        input_data["right_bound"]
    ))

output_data = generate_value(input_data)
print(output_data)
