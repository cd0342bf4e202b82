"""The randomizer's serving cell (examples/randomizer.py, cell 2) as a plain module,
shared by the Flask and FastAPI apps so that all three targets run the same code:
draw a random integer between the bounds, and print it (the cell's print goes to the
instance log in Berth; here to the server's stdout, which the benchmark sends to a file).
"""
from random import randint, seed

seed()


def generate_value(input_data):
    return dict(generated_value=randint(
        input_data["left_bound"],
        input_data["right_bound"]
    ))


def run_cell(input_data):
    output_data = generate_value(input_data)
    print(output_data)
    return output_data
