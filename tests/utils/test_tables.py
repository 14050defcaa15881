"""The one table module of compare, test and ablate: padded and Markdown tables, 4-decimal cells, exact CSV."""
import csv

from mclir_plugin.utils.tables import format_table, number, write_csv


def test_plain_table_pads_columns_to_the_widest_cell_and_markdown_keeps_cells():
    headers, rows = ['run', 'psnr'], [['baseline', '27.1234'], ['spn', '']]
    assert format_table(headers, rows).splitlines() == ['run       psnr', '--------  -------', 'baseline  27.1234',
                                                        'spn']
    assert format_table(headers, rows, markdown=True).splitlines() == [
        '| run | psnr |', '| --- | --- |', '| baseline | 27.1234 |', '| spn |  |']


def test_cells_have_four_decimals_and_a_sign_for_differences():
    assert (number(27.123456), number(-0.00004, signed=True), number(0.5, signed=True)) == \
        ('27.1235', '-0.0000', '+0.5000')
    assert number(None) == '' and number(None, signed=True) == ''


def test_csv_writes_floats_exactly_none_as_empty_and_only_the_columns(tmp_path):
    path = tmp_path / 'rows.csv'
    values = [0.1 + 0.2, 1 / 3, 27.123456789012345]
    rows = [{'name': 'a', 'value': values[0], 'extra': 'left out'}, {'name': 'b', 'value': None},
            {'name': 'c'}, {'value': values[2], 'name': 'd'}]
    write_csv(str(path), ['name', 'value'], rows)
    with open(path, newline='', encoding='utf-8') as file:
        read = list(csv.DictReader(file))
    assert [list(r.items()) for r in read] == [[('name', 'a'), ('value', repr(values[0]))],
                                              [('name', 'b'), ('value', '')], [('name', 'c'), ('value', '')],
                                              [('name', 'd'), ('value', repr(values[2]))]]
    assert float(read[0]['value']) == values[0]  # full precision: the very float comes back
